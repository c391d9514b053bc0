"""The recorded schedule: what the emulator scheduled for each request, kept for inspection.

``GET /admin/schedule`` answers ``{"now": <clock>, "requests": [entry, ...]}`` in the order the
requests were placed on the schedule (``?request_id=ID`` keeps only that id's entries; an id a
client reused may appear more than once). An entry::

    {"request_id": "...", "arrival": 12.5, "start": 12.6, "first_token": 12.64,
     "last_token": 12.66, "end": 12.66, "output_tokens": 16, "state": "done", "slots": 2,
     "deadline_s": 0.16}

Times are seconds on the emulator's clock (``time.monotonic`` unless injected: on Linux the same
clock in every process of the machine). They are the schedule's own times, computed by
:mod:`lpu_emulator.engine`, never measured: ``start`` is when the request takes a slot (its
prefill starts), ``first_token`` / ``last_token`` are when its first and last tokens are due,
``end`` is when its slot frees (``last_token``, or the moment it was withdrawn). So a test can
assert exact statements on them (FIFO per replica, at most ``slots`` overlapping, first token by
the deadline) that a busy machine cannot make flaky. ``deadline_s`` is the request's
``x-lpu-deadline-ms`` in seconds (null without one); ``state`` is the job's
(:class:`~lpu_emulator.engine.JobState`). While a request waits, ``start`` and the times after it
are the projection in force.

Cost on the request path: one ``deque.append`` of a reference to the request's job; everything
else happens when the endpoint is read. The buffer keeps the last :data:`RECORDS` requests.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lpu_emulator.engine import Job
from lpu_emulator.keys import BACKEND

__all__ = ["RECORDING", "RECORDS", "ScheduleRecording", "get_schedule"]

RECORDS = 4096
"""Requests kept (the oldest are dropped first)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    request_id: str
    job: Job
    """The engine's own job: read at query time, so its final start and end are reported."""
    slots: int
    deadline_ms: str | None
    """The raw header (already validated by admission); parsed only when read."""


def _deadline_s(raw: str | None) -> float | None:
    if raw is None:
        return None
    ms = float(raw)
    return ms / 1e3 if math.isfinite(ms) else None


class ScheduleRecording:
    """A bounded record of scheduled requests, newest last. Not thread-safe (one loop)."""

    def __init__(self, clock: Callable[[], float], capacity: int = RECORDS) -> None:
        self.clock = clock
        """The schedule's clock (the ``now`` of the endpoint)."""
        self._entries: deque[_Entry] = deque(maxlen=capacity)

    def add(self, request_id: str, job: Job, slots: int, deadline_ms: str | None) -> None:
        """Record a request just placed on the schedule (``slots``: its artifact's)."""
        self._entries.append(_Entry(request_id, job, slots, deadline_ms))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The JSON entries (module docstring), oldest first, optionally of one id."""
        return [_to_json(e) for e in self._entries
                if request_id is None or e.request_id == request_id]


def _to_json(e: _Entry) -> dict[str, Any]:
    job = e.job
    return {
        "request_id": e.request_id,
        "arrival": job.arrival,
        "start": job.start,
        "first_token": job.token_time(0),
        "last_token": job.token_time(job.output_tokens - 1),
        "end": job.end,
        "output_tokens": job.output_tokens,
        "state": str(job.state),
        "slots": e.slots,
        "deadline_s": _deadline_s(e.deadline_ms),
    }


RECORDING = web.AppKey("schedule_recording", ScheduleRecording)


async def get_schedule(request: web.Request) -> web.Response:
    """``GET /admin/schedule[?request_id=ID]`` (module docstring)."""
    request.app[BACKEND].schedule.advance()  # jobs whose time has come read as running or done
    recording = request.app[RECORDING]
    return web.json_response({"now": recording.clock(),
                              "requests": recording.entries(request.query.get("request_id"))})
