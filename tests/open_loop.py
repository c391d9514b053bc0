"""An open-loop sender for the admission tests: every planned request goes out at its time
whether or not earlier ones were answered, and what each one got back is kept.

Times here only pace the sender; what a test asserts about timing it reads from the emulator's
recorded schedule (``tests/recorded_schedule.py``), never from when bytes arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

__all__ = ["Planned", "Shot", "open_loop", "poisson_times"]


@dataclass(frozen=True)
class Planned:
    at_s: float
    """Offset from the start of the run (seconds)."""
    tag: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Shot:
    """One request as the client saw it."""

    tag: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    """Response headers, lower-cased."""
    body: bytes = b""

    @property
    def admitted(self) -> bool:
        return self.status == 200

    @property
    def request_id(self) -> str:
        """The id the router gave the request (and forwarded to its backend)."""
        return self.headers["x-request-id"]

    @property
    def predicted_ttft_s(self) -> float:
        """The router's predicted time to first token (``x-lpu-predicted-ttft-ms``)."""
        return float(self.headers["x-lpu-predicted-ttft-ms"]) / 1e3


def poisson_times(rate: float, duration_s: float, seed: int) -> list[float]:
    """Arrival offsets (seconds) of a Poisson process of ``rate`` per second."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 2) + 16)
    times = np.cumsum(gaps)
    return [float(t) for t in times[times < duration_s]]


async def _shoot(session: aiohttp.ClientSession, url: str, p: Planned) -> Shot:
    shot = Shot(p.tag)
    async with session.post(url + "/v1/chat/completions", json=p.body, headers=p.headers) as r:
        shot.status = r.status
        shot.headers = {k.lower(): v for k, v in r.headers.items()}
        shot.body = await r.read()
    return shot


async def open_loop(session: aiohttp.ClientSession, url: str,
                    plan: Iterable[Planned]) -> list[Shot]:
    """Send every planned request at its time, never waiting for answers (open loop)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.02
    tasks: list[asyncio.Task[Shot]] = []
    for p in sorted(plan, key=lambda p: p.at_s):
        delay = t0 + p.at_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_shoot(session, url, p)))
    return list(await asyncio.gather(*tasks))
