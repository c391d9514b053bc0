"""The emulators' recorded schedules (``GET /admin/schedule``, see
:mod:`lpu_emulator.recording`) and the exact statements tests make on them.

The times are the schedule's own (computed by the emulator's engine, never measured), so these
checks hold or fail the same way on an idle or a saturated machine:

* :func:`fifo_problems`: one replica's schedule is FIFO (starts in arrival order, none before
  its arrival), never runs more than ``slots`` requests at once, and wastes no slot (a request
  that waited started the moment a slot freed);
* :func:`late_problems`: requests whose first token was scheduled later than a bound after their
  arrival at the emulator (or after their own ``x-lpu-deadline-ms``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp

__all__ = ["Scheduled", "fifo_problems", "late_problems", "recorded", "recorded_at",
           "recorded_by_id"]

_EPS = 1e-9
"""Float slack: ``last_token`` and ``end`` are the same instant by two formulas."""


@dataclass(frozen=True)
class Scheduled:
    """One request on one replica's schedule (seconds on the emulator's clock)."""

    backend: str
    request_id: str
    arrival: float
    start: float
    first_token: float
    last_token: float
    end: float
    output_tokens: int
    state: str
    slots: int
    deadline_s: float | None

    @property
    def ttft_s(self) -> float:
        """Scheduled time to first token from the arrival at the emulator."""
        return self.first_token - self.arrival

    @property
    def held_slot(self) -> bool:
        """False for a request withdrawn while it waited (it never ran)."""
        return not (self.state == "cancelled" and self.end <= self.start)


async def recorded_at(url: str) -> tuple[float, list[Scheduled]]:
    """One emulator's clock when it answered, and its recorded schedule in placement order."""
    async with aiohttp.ClientSession() as s, s.get(url + "/admin/schedule") as r:
        assert r.status == 200, await r.text()
        doc = await r.json()
    return float(doc["now"]), [Scheduled(backend=url, **e) for e in doc["requests"]]


async def recorded(urls: Iterable[str]) -> dict[str, list[Scheduled]]:
    """Each emulator's recorded schedule, in placement order."""
    return {url: (await recorded_at(url))[1] for url in urls}


async def recorded_by_id(urls: Iterable[str]) -> dict[str, list[Scheduled]]:
    """Every recorded request by its ``x-request-id`` (over all ``urls``)."""
    out: dict[str, list[Scheduled]] = {}
    for entries in (await recorded(urls)).values():
        for e in entries:
            out.setdefault(e.request_id, []).append(e)
    return out


def fifo_problems(entries: list[Scheduled]) -> list[str]:
    """What breaks FIFO, the slot count or work conservation in one replica's schedule
    (``entries`` in placement order, as :func:`recorded` gives them); empty: it holds."""
    problems: list[str] = []
    ran = [e for e in entries if e.held_slot]
    for a, b in itertools.pairwise(ran):
        if b.arrival < a.arrival or b.start < a.start - _EPS:
            problems.append(f"not FIFO: {a.request_id} then {b.request_id}")
    for e in ran:
        if e.start < e.arrival - _EPS:
            problems.append(f"{e.request_id} starts before it arrives")
        if e.state != "cancelled" and abs(e.end - e.last_token) > _EPS:
            problems.append(f"{e.request_id} frees its slot at {e.end}, not at its last token")
    # At most `slots` at once: at equal times an end frees its slot before a start takes it.
    events = sorted([(e.start, 1, e.slots) for e in ran] + [(e.end, -1, e.slots) for e in ran],
                    key=lambda ev: (ev[0] + (_EPS if ev[1] > 0 else 0.0), ev[1]))
    busy = 0
    for t, step, slots in events:
        busy += step
        if busy > slots:
            problems.append(f"{busy} requests hold the {slots} slots at {t}")
            break
    # No slot idles while a request waits (cancellations re-place the queue: not checked then).
    if all(e.state != "cancelled" for e in entries):
        ends = [e.end for e in ran]
        for e in ran:
            if e.start > e.arrival + _EPS and not any(abs(e.start - t) <= _EPS for t in ends):
                problems.append(f"{e.request_id} waited {e.start - e.arrival:.6f} s while a"
                                " slot was free")
    return problems


def late_problems(entries: Iterable[Scheduled], bound_s: float | None = None) -> list[str]:
    """Requests whose first token is scheduled more than ``bound_s`` after their arrival at the
    emulator, or (with ``bound_s`` None, or as well) after their own deadline."""
    late = []
    for e in entries:
        for name, bound in (("bound", bound_s), ("deadline", e.deadline_s)):
            if bound is not None and e.ttft_s > bound + _EPS:
                late.append(f"{e.request_id} on {e.backend}: first token {e.ttft_s * 1e3:.3f} ms"
                            f" after arrival, {name} {bound * 1e3:.3f} ms")
    return late
