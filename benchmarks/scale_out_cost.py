"""The piggyback's own cost per request: parse an ``x-lpu-schedule`` value and merge it into a
replica's timeline, merged (a full rebuild) and skipped (the cheap check), at the timeline sizes
an overloaded 8-slot replica has (running plus queued reservations of one router).

Measured in this process with ``time.perf_counter`` over many repetitions, on a timeline built
the way the router builds it; the result is microseconds per answer.
"""

from __future__ import annotations

import math
import time
from typing import Any

from lpu_protocol.load_report import ScheduleReport
from router.admission.settings import ReplicaShape
from router.admission.timeline import ReplicaTimeline

__all__ = ["piggyback_cost"]

_SLOTS = 8
_SERVICE_S = 0.135


def _timeline(reservations: int) -> ReplicaTimeline:
    tl = ReplicaTimeline(ReplicaShape("http://r", slots=_SLOTS, prefill_s=0.08,
                                      per_token_s=0.0018))
    for i in range(reservations):
        tl.reserve(i, _SERVICE_S, i * 1e-4)
    return tl


def _per_call_us(fn: Any, repeat: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1e6


def piggyback_cost(repeat: int = 20000) -> dict[str, Any]:
    """Microseconds per answer: the parse, and parse + merge, merged and skipped, for 8, 16
    and 32 live reservations."""
    out: dict[str, Any] = {"slots": _SLOTS, "repeat": repeat, "by_reservations": {}}
    for n in (8, 16, 32):
        tl = _timeline(n)
        now = n * 1e-4
        sent = math.nextafter(now, math.inf)
        tail = sorted(tl._tail)  # the router's own view, as a backend holding only it says
        same = ScheduleReport(_SLOTS, _SLOTS, max(0, n - _SLOTS),
                              tuple(max(0.0, t - now) for t in tail)).to_header()
        later = ScheduleReport(_SLOTS, _SLOTS, n, tuple(max(0.0, t - now) + 0.2
                                                         for t in tail)).to_header()
        parse = _per_call_us(lambda v=same: ScheduleReport.from_header(v), repeat)

        def skipped(v: str = same, t: ReplicaTimeline = tl, at: float = now,
                    sent: float = sent) -> None:
            t.merge_schedule(ScheduleReport.from_header(v).slot_free_in_s, at, sent)

        def merged(v: str = later, at: float = now, n: int = n, sent: float = sent) -> None:
            t = _timeline(n)
            t.merge_schedule(ScheduleReport.from_header(v).slot_free_in_s, at, sent)

        build = _per_call_us(lambda n=n: _timeline(n), repeat // 10)
        assert not _timeline(n).merge_schedule(ScheduleReport.from_header(same).slot_free_in_s,
                                               now, sent), "the same view must be skipped"
        out["by_reservations"][str(n)] = {
            "header_chars": len(later),
            "parse_us": parse,
            "parse_and_skip_us": _per_call_us(skipped, repeat),
            "parse_and_merge_us": _per_call_us(merged, repeat // 10) - build,
        }
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(piggyback_cost(), indent=1))
