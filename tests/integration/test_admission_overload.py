"""Twice the capacity of a small bucket, open loop: the router keeps every promise it makes.

One replica with two slots, 16-token requests (D = 53.4 ms, capacity 37.5 requests/s), a TTFT
SLO of 3 D, Poisson arrivals at twice the capacity for 6 s. Every admitted request gets its first
token within the SLO (plus delivery jitter), every refusal comes at once with a useful
``Retry-After``, and the bucket completes close to its capacity.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter

from admission_harness import (
    JITTER_S,
    AccessLog,
    LoopLag,
    Planned,
    chat_body,
    client_session,
    emulators,
    late_admitted,
    open_loop,
    poisson_times,
    router,
    router_raw,
    service_s,
)

SLOTS = 2
TOKENS = 16
D = service_s(TOKENS)
SLO = 3 * D
CAPACITY = SLOTS / D
DURATION_S = 6.0
REASONS = ("slo_ttft", "queue_full", "utilization", "backend_deadline")


async def test_overload_every_admitted_request_meets_its_slo() -> None:
    async with (
        emulators(slots=SLOTS) as urls,
        router(router_raw(urls, slots=SLOTS, ttft_slo_s=SLO)) as r,
        client_session() as session,
        LoopLag() as lag,
        AccessLog() as log,
    ):
        plan = [Planned(t, "standard", chat_body(TOKENS))
                for t in poisson_times(2 * CAPACITY, DURATION_S, seed=1)]
        shots = await open_loop(session, r.url, plan)
        decided = sum(r.registry.get_sample_value("lpu_router_admission_decisions_total", {
            "bucket": "small", "priority": "standard", "decision": "rejected", "reason": reason,
        }) or 0.0 for reason in REASONS)

    admitted = [s for s in shots if s.admitted]
    refused = [s for s in shots if s.status == 429]
    assert len(admitted) + len(refused) == len(shots), Counter(s.status for s in shots)
    assert refused, "twice the capacity must be refused in part"
    assert decided >= len(refused)

    # Every promise kept: first token within the SLO (the router's own prediction says so too).
    assert not late_admitted(shots, SLO + JITTER_S, lag, log)
    assert all(float(s.headers["x-lpu-predicted-ttft-ms"]) <= SLO * 1e3 for s in admitted)

    # Refusals are immediate, say why, and say when to come back.
    latencies = sorted(s.done_s for s in refused)
    assert statistics.median(latencies) < SLO / 4, latencies[len(latencies) // 2]
    assert latencies[int(0.95 * (len(latencies) - 1))] < SLO / 2
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
