"""Fault injection for reliability tests: off by default, seeded, changeable at runtime.

Each admitted request draws its fate once, from the emulator's seeded generator:

* ``error_rate``: 500 with an OpenAI error body before the first byte (no slot used).
* ``stall_rate``: the delivery pauses ``stall_s`` seconds after ``stall_after_tokens``
  tokens; the compute schedule and the slot are unaffected (a stalled host or
  network path), so the tokens due meanwhile arrive at once afterwards.
* ``crash_rate``: the connection is aborted (no clean end) when token
  ``crash_after_tokens`` is due.
* ``garbage_rate``: a 200 whose stream carries a broken SSE frame (non-streaming:
  a truncated JSON body) at that point.
* ``stream_error_rate``: one ``data: {"error": ...}`` frame at that point and the
  end of the stream, as OpenAI ends a stream that fails after its first byte.

At most one of crash, garbage and stream error hits a request (checked in that
order); a stall can combine with them. The settings are set at startup and
replaced whole by ``POST /admin/faults`` (keys left out keep their value).

Example::

    {"error_rate": 0.1, "stall_s": 2.0, "stall_rate": 0.05, "crash_rate": 0.01,
     "crash_after_tokens": 5, "garbage_rate": 0.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any

import numpy as np

__all__ = ["FaultKind", "FaultPlan", "FaultSettings", "plan_faults"]

_RATES = ("error_rate", "stall_rate", "crash_rate", "garbage_rate", "stream_error_rate")
_COUNTS = ("crash_after_tokens", "stall_after_tokens")


class FaultKind(StrEnum):
    """The faults, as metric label and log field."""

    ERROR = "error"
    STALL = "stall"
    CRASH = "crash"
    GARBAGE = "garbage"
    STREAM_ERROR = "stream_error"


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """Probabilities (0..1) per request, durations in seconds, positions in tokens."""

    error_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 0.0
    stall_after_tokens: int = 1
    crash_rate: float = 0.0
    crash_after_tokens: int = 1
    garbage_rate: float = 0.0
    stream_error_rate: float = 0.0

    @property
    def active(self) -> bool:
        return any(getattr(self, k) > 0 for k in _RATES)

    def errors(self) -> list[str]:
        """Every problem with these settings (empty when valid)."""
        out: list[str] = []
        for key in _RATES:
            v = getattr(self, key)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                out.append(f"faults.{key}: must be a probability in [0, 1], got {v!r}")
        if not (math.isfinite(self.stall_s) and self.stall_s >= 0):
            out.append(f"faults.stall_s: must be a finite number >= 0, got {self.stall_s!r}")
        for key in _COUNTS:
            if getattr(self, key) < 0:
                out.append(f"faults.{key}: must be an integer >= 0, got {getattr(self, key)!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, raw: Mapping[str, Any]) -> FaultSettings:
        """These settings with the keys of ``raw`` replaced; ValueError lists every problem."""
        known = {f.name for f in fields(self)}
        problems: list[str] = []
        changes: dict[str, Any] = {}
        for key, v in raw.items():
            if key not in known:
                problems.append(f"faults.{key}: unknown key")
            elif isinstance(v, bool) or not isinstance(v, int | float):
                problems.append(f"faults.{key}: expected a number, got {v!r}")
            elif key in _COUNTS:
                if v != int(v):
                    problems.append(f"faults.{key}: expected an integer, got {v!r}")
                else:
                    changes[key] = int(v)
            else:
                changes[key] = float(v)
        if not problems:
            new = replace(self, **changes)
            problems = new.errors()
            if not problems:
                return new
        raise ValueError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What happens to one request. ``None`` fields mean no such fault."""

    error: bool = False
    stall_at: int | None = None
    """Pause ``stall_s`` after this many tokens were delivered."""
    stall_s: float = 0.0
    break_kind: FaultKind | None = None
    """CRASH, GARBAGE or STREAM_ERROR: how the stream breaks."""
    break_at: int = 0
    """The stream breaks when this many tokens were delivered."""

    @property
    def clean(self) -> bool:
        return not self.error and self.stall_at is None and self.break_kind is None


NO_FAULTS = FaultPlan()


def plan_faults(settings: FaultSettings, rng: np.random.Generator) -> FaultPlan:
    """Draw one request's faults. Draws nothing (keeps the sequence) when all are off."""
    if not settings.active:
        return NO_FAULTS
    u = rng.random(size=5)
    if u[0] < settings.error_rate:
        return FaultPlan(error=True)
    stall_at = settings.stall_after_tokens if u[1] < settings.stall_rate else None
    kind: FaultKind | None = None
    if u[2] < settings.crash_rate:
        kind = FaultKind.CRASH
    elif u[3] < settings.garbage_rate:
        kind = FaultKind.GARBAGE
    elif u[4] < settings.stream_error_rate:
        kind = FaultKind.STREAM_ERROR
    return FaultPlan(
        stall_at=stall_at,
        stall_s=settings.stall_s if stall_at is not None else 0.0,
        break_kind=kind,
        break_at=settings.crash_after_tokens,
    )
