"""Application state keys shared by the emulator's route modules."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from lpu_emulator.backend import Backend
from lpu_emulator.delivery import Deliverer

__all__ = ["BACKEND", "DELIVERER", "STARTED", "WALL_CLOCK"]

BACKEND = web.AppKey("backend", Backend)
DELIVERER = web.AppKey("deliverer", Deliverer)
WALL_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("wall_clock")
STARTED = web.AppKey("started", int)
"""Unix seconds at app creation (the ``created`` of ``/v1/models`` entries)."""
