"""Twice the capacity of a small bucket, open loop: the router keeps every promise it makes.

One replica with two slots, 16-token requests (D = 53.4 ms, capacity 37.5 requests/s), a TTFT
SLO of 3 D, Poisson arrivals at twice the capacity for 6 s. Every admitted request's first token
is scheduled by the emulator within the SLO of its arrival there (and within the router's own
prediction, which is within the SLO), the emulator's schedule is FIFO over its two slots, every
refusal is decided at the router without the request ever reaching the backend's queue and
comes with a useful ``Retry-After``, and the bucket completes close to its capacity. All of it
is read from the emulator's recorded schedule, not from when bytes arrived.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter

from open_loop import Planned, open_loop, poisson_times
from recorded_schedule import fifo_problems, late_problems, recorded
from stack import chat, client_session, rig_emulators, router, router_raw, service_s

SLOTS = 2
TOKENS = 16
D = service_s(TOKENS)
SLO = 3 * D
CAPACITY = SLOTS / D
DURATION_S = 6.0
REASONS = ("slo_ttft", "queue_full", "utilization", "backend_deadline")


async def test_overload_every_admitted_request_meets_its_slo() -> None:
    async with (
        rig_emulators(slots=SLOTS) as urls,
        router(router_raw(urls, slots=SLOTS, ttft_slo_s=SLO)) as r,
        client_session() as session,
    ):
        plan = [Planned(t, "standard", chat(TOKENS, stream=True))
                for t in poisson_times(2 * CAPACITY, DURATION_S, seed=1)]
        shots = await open_loop(session, r.url, plan)
        decided = sum(r.registry.get_sample_value("lpu_router_admission_decisions_total", {
            "bucket": "small", "priority": "standard", "decision": "rejected", "reason": reason,
        }) or 0.0 for reason in REASONS)
        (schedule,) = (await recorded(urls)).values()

    admitted = [s for s in shots if s.admitted]
    refused = [s for s in shots if s.status == 429]
    assert len(admitted) + len(refused) == len(shots), Counter(s.status for s in shots)
    assert refused, "twice the capacity must be refused in part"
    assert decided >= len(refused)

    # Every promise kept, on the backend's own schedule: each admitted request ran there once,
    # its first token within the SLO of its arrival (and within the deadline the router sent);
    # the router's own prediction was within the SLO; the replica served FIFO with at most two
    # at once and no slot idle while a request waited.
    by_id = {e.request_id: e for e in schedule}
    assert len(by_id) == len(schedule)
    assert {s.request_id for s in admitted} == set(by_id)
    assert all(e.state == "done" and e.deadline_s is not None for e in schedule)
    assert not late_problems(schedule, SLO)
    assert all(s.predicted_ttft_s <= SLO for s in admitted)
    assert not fifo_problems(schedule)

    # Refusals are immediate (decided before any backend queue: none of them was scheduled),
    # say why, and say when to come back.
    assert not {s.request_id for s in refused} & set(by_id)
    for s in refused:
        assert s.headers["x-lpu-reject-reason"] in REASONS
        retry_ms = int(s.headers["retry-after-ms"])
        assert 0 < retry_ms <= 1000
        assert int(s.headers["retry-after"]) >= 1
        error = json.loads(s.body)["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert "retry in" in error["message"]
    assert statistics.median(int(s.headers["retry-after-ms"]) for s in refused) <= SLO * 1e3

    # Close to capacity: refusing what would be late does not waste the slots.
    assert len(admitted) / DURATION_S >= 0.7 * CAPACITY, (len(admitted), CAPACITY)
