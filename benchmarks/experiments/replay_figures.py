"""The figures of a trace replay (experiment 8), computed from what one arm's run left: the
client's records and the emulators' recorded schedules. Pure: nothing here touches the network.

Every request has a *home* bucket (the smallest compiled shape that fits it, as the router's
own :class:`router.buckets.BucketTable` places it) and, once admitted, a *served* bucket (the
pool whose emulator recorded it). A request whose served bucket is not its home one spilled.
Its SLO is always its home bucket's TTFT SLO (the request's own, wherever it ran).

Times: the replay runs with every artifact duration multiplied by ``scale`` (the emulators'
``time_scale``); every figure here is converted back to the artifacts' own time (model time:
wall seconds / ``scale``), so runs at different scales read in the same units.

Per home bucket (its *own traffic*):

* ``goodput_rps``: completions whose client-measured TTFT met the SLO, per model-time second
  of the replayed window, wherever they ran; ``own_goodput_rps`` counts only those that ran on
  the home bucket itself; ``schedule_goodput_rps``: completions whose *scheduled* TTFT met it
  (the emulator's arrival to first token: what the planner predicts, without the router's,
  loopback's and client's own delays);
* ``refused``: 429 answers; ``violations``: admitted requests whose first token the recorded
  schedule put later than the SLO after their arrival at the emulator (exact, independent of
  how busy the machine was); ``late_client``: completions later than the SLO at the client;
* ``spilled_to``: requests of this home bucket served by each larger bucket;
* ``timed_out``: admitted requests still streaming at the run's drain deadline (cancelled by
  the client); ``failed``: any other answer or error (``failed_by_status``: their HTTP
  statuses, ``"0"`` for no answer).

Per served bucket, ``utilization``: the slot-seconds its recorded schedule kept busy (each
entry's ``start`` to ``end``, whoever's traffic it was) over its slots times the replayed
window, as the planner's simulator defines it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.records import ClientOutcome, RequestRecord
from benchmarks.workload import PlannedRequest

__all__ = ["Served", "arm_figures", "ended_once_problems", "merge_schedules", "utilization"]


@dataclass(frozen=True, slots=True)
class Served:
    """One request's entry on a recorded schedule (emulator clock, wall seconds)."""

    bucket: str
    arrival: float
    first_token: float
    state: str
    start: float | None = None
    """When it took a slot (None: not read)."""
    end: float | None = None
    """When its slot freed (None: not read)."""

    @property
    def ttft_s(self) -> float:
        return self.first_token - self.arrival


def merge_schedules(polls: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]
                    ) -> dict[str, list[Served]]:
    """Request id -> its entries, from repeated reads of the emulators' ``/admin/schedule``
    (each ``(bucket, entries)``; an emulator keeps only its latest requests, so the run reads
    them while it goes). The last read of a (bucket, id, arrival) wins: it holds the final
    state of a request seen while it still waited."""
    latest: dict[tuple[str, str, float], Served] = {}
    for bucket, entries in polls:
        for e in entries:
            rid, arrival = str(e["request_id"]), float(e["arrival"])
            latest[(bucket, rid, arrival)] = Served(
                bucket, arrival, float(e["first_token"]), str(e["state"]),
                _seconds(e.get("start")), _seconds(e.get("end")))
    out: dict[str, list[Served]] = {}
    for (_, rid, _), s in latest.items():
        out.setdefault(rid, []).append(s)
    return out


def ended_once_problems(planned: Sequence[PlannedRequest], records: Sequence[RequestRecord],
                        served: Mapping[str, Sequence[Served]], prefix: str) -> list[str]:
    """What breaks "every admitted request ends once": a request the client saw admitted (an
    answer of 200) must be on exactly one recorded schedule, and a refused one on none (the
    router refused it before any backend saw it). Empty: it holds."""
    problems: list[str] = []
    for p, r in zip(planned, records, strict=True):
        entries = served.get(f"{prefix}{p.index}", [])
        if r.status == 200 and len(entries) != 1:
            problems.append(f"request {p.index} admitted, on {len(entries)} schedules")
        elif r.outcome == ClientOutcome.REJECTED and entries:
            problems.append(f"request {p.index} refused, yet on a schedule")
        elif r.status == 200 and r.outcome == ClientOutcome.COMPLETED \
                and entries[0].state != "done":
            problems.append(f"request {p.index} completed, schedule state {entries[0].state}")
    return problems


def _seconds(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) else None


def utilization(served: Mapping[str, Sequence[Served]], *, prefix: str,
                slots: Mapping[str, int], scale: float, window_s: float) -> dict[str, float]:
    """Per served bucket: busy slot-seconds of the run's requests (ids starting ``prefix``)
    over ``slots[bucket]`` x ``window_s``, model time (``scale``: the run's time scale).
    Entries without both times count nothing."""
    busy = dict.fromkeys(slots, 0.0)
    for rid, entries in served.items():
        if not rid.startswith(prefix):
            continue
        for e in entries:
            if e.bucket in busy and e.start is not None and e.end is not None:
                busy[e.bucket] += max(e.end - e.start, 0.0) / scale
    return {b: busy[b] / (n * window_s) if n and window_s > 0 else math.nan
            for b, n in slots.items()}


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else math.nan


def arm_figures(planned: Sequence[PlannedRequest], records: Sequence[RequestRecord],
                served: Mapping[str, Sequence[Served]], *, prefix: str, buckets: Sequence[str],
                slo_s: Mapping[str, float], scale: float, window_s: float,
                slots: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Figures of one arm, per home bucket and for all (module docstring). ``slo_s``: each
    bucket's TTFT SLO in model time; ``window_s``: the replayed window in model time;
    ``slots``: each bucket's slots over its replicas (given: the figures hold
    ``utilization``)."""
    per: dict[str, dict[str, Any]] = {
        b: {"offered": 0, "refused": 0, "admitted": 0, "completed": 0, "met": 0, "own_met": 0,
            "met_schedule": 0, "violations": 0, "late_client": 0, "failed": 0,
            "timed_out": 0, "failed_by_status": {},
            "spilled_to": {o: 0 for o in buckets[i + 1:]}, "_ttft": []}
        for i, b in enumerate(buckets)}
    for p, r in zip(planned, records, strict=True):
        home = str(p.bucket)
        f = per[home]
        f["offered"] += 1
        entries = served.get(f"{prefix}{p.index}", [])
        if r.outcome == ClientOutcome.REJECTED:
            f["refused"] += 1
            continue
        if r.status != 200:
            if r.outcome == ClientOutcome.TIMED_OUT:
                f["timed_out"] += 1
            else:
                f["failed"] += 1
                key = str(r.status)
                f["failed_by_status"][key] = f["failed_by_status"].get(key, 0) + 1
            continue
        f["admitted"] += 1
        slo = slo_s[home]
        ran_on = entries[0].bucket if entries else home
        if ran_on != home:
            f["spilled_to"][ran_on] = f["spilled_to"].get(ran_on, 0) + 1
        late = any(e.ttft_s / scale > slo + 1e-9 for e in entries)
        f["violations"] += int(late)
        if r.outcome != ClientOutcome.COMPLETED or r.ttft_s is None:
            f["timed_out" if r.outcome == ClientOutcome.TIMED_OUT else "failed"] += 1
            continue
        f["completed"] += 1
        f["met_schedule"] += int(bool(entries) and not late)
        ttft = r.ttft_s / scale
        f["_ttft"].append(ttft)
        if ttft <= slo:
            f["met"] += 1
            f["own_met"] += int(ran_on == home)
        else:
            f["late_client"] += 1
    every: list[float] = []
    for f in per.values():
        ttfts: list[float] = f.pop("_ttft")
        every += ttfts
        f["p99_ttft_s"] = _p99(ttfts)
        f["goodput_rps"] = f["met"] / window_s
        f["schedule_goodput_rps"] = f["met_schedule"] / window_s
        f["own_goodput_rps"] = f["own_met"] / window_s
        f["offered_rps"] = f["offered"] / window_s
    total = {k: sum(f[k] for f in per.values())
             for k in ("offered", "refused", "admitted", "completed", "met", "met_schedule",
                       "violations", "late_client", "failed", "timed_out")}
    total["spills"] = sum(sum(f["spilled_to"].values()) for f in per.values())
    total["goodput_rps"] = total["met"] / window_s
    total["schedule_goodput_rps"] = total["met_schedule"] / window_s
    total["offered_rps"] = total["offered"] / window_s
    total["p99_ttft_s"] = _p99(every)
    out: dict[str, Any] = {"buckets": per, "total": total}
    if slots is not None:
        out["utilization"] = utilization(served, prefix=prefix, slots=slots, scale=scale,
                                         window_s=window_s)
    return out
