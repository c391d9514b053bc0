"""A backend's own account of its schedule: the ``GET /load`` body.

Every backend replica is shared by all router replicas and worker processes,
so only the backend knows the whole schedule. It reports it as JSON::

    {"slots": 8, "running": 8, "waiting": 3,
     "slot_free_in_s": [0.12, 0.12, 0.31, 0.9, 1.1, 1.1, 1.4, 1.9],
     "prefill_s": 0.19, "per_token_s": 0.001786, "ready": true}

``slot_free_in_s`` holds, ascending, the seconds from the report's instant until
each slot is free once all running and queued work is scheduled FIFO; a new
request would start after ``slot_free_in_s[0]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LoadReport"]


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One ``/load`` answer, validated. Times in seconds, relative to the report."""

    slots: int
    running: int
    waiting: int
    slot_free_in_s: tuple[float, ...]
    """Ascending, one per slot, each >= 0."""
    prefill_s: float
    per_token_s: float
    ready: bool = True

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> LoadReport:
        """Validate a decoded ``/load`` body; raise ValueError naming every bad field."""
        errors: list[str] = []

        def count(key: str) -> int:
            v = raw.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                errors.append(f"{key}: expected an integer >= 0, got {v!r}")
                return 0
            return v

        def seconds(key: str, v: object) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float):
                errors.append(f"{key}: expected a finite number >= 0, got {v!r}")
                return 0.0
            if not math.isfinite(v) or v < 0:
                errors.append(f"{key}: expected a finite number >= 0, got {v!r}")
                return 0.0
            return float(v)

        slots = count("slots")
        running = count("running")
        waiting = count("waiting")
        free_raw = raw.get("slot_free_in_s")
        free: list[float] = []
        if not isinstance(free_raw, list | tuple):
            errors.append(f"slot_free_in_s: expected a list of numbers, got {free_raw!r}")
        else:
            free = [seconds(f"slot_free_in_s[{i}]", v) for i, v in enumerate(free_raw)]
        prefill = seconds("prefill_s", raw.get("prefill_s"))
        per_token = seconds("per_token_s", raw.get("per_token_s"))
        ready = raw.get("ready", True)
        if not isinstance(ready, bool):
            errors.append(f"ready: expected a boolean, got {ready!r}")
            ready = False
        if errors:
            raise ValueError("invalid /load report: " + "; ".join(errors))
        # The backend promises ascending order; sorting costs nothing at c <= 16
        # and keeps the merge sound if one does not.
        return cls(slots, running, waiting, tuple(sorted(free)), prefill, per_token, ready)
