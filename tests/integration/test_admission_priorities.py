"""Priorities end to end: under overload sheddable (batch) traffic is refused first.

A tenant whose key allows ``interactive`` sends a mix at twice the bucket's capacity: half
interactive (its own class), half batch -- asked for with the ``x-priority: batch`` header or with
``service_tier: "flex"``. Batch may use half of the TTFT SLO, so when the bucket is full it is
refused while interactive requests still fit.
"""

from __future__ import annotations

from open_loop import Planned, Shot, open_loop, poisson_times
from recorded_schedule import fifo_problems, late_problems, recorded
from stack import chat, client_session, rig_emulators, router, router_raw, service_s

SLOTS = 2
TOKENS = 16
D = service_s(TOKENS)
SLO = 4 * D
CAPACITY = SLOTS / D
DURATION_S = 4.0
KEY = {"Authorization": "Bearer sk-gold"}
TENANTS = {"tenants": [{"name": "gold", "api_keys": ["sk-gold"], "priority": "interactive"}]}


def _ratio(shots: list[Shot], tag: str) -> float:
    mine = [s for s in shots if s.tag == tag]
    assert mine
    return sum(s.admitted for s in mine) / len(mine)


async def test_batch_is_refused_before_interactive() -> None:
    plan = [Planned(t, "interactive", chat(TOKENS, stream=True), KEY)
            for t in poisson_times(CAPACITY, DURATION_S, seed=5)]
    plan += [Planned(t, "batch-header", chat(TOKENS, stream=True), KEY | {"x-priority": "batch"})
             for t in poisson_times(CAPACITY / 2, DURATION_S, seed=6)]
    plan += [Planned(t, "batch-flex", chat(TOKENS, stream=True, service_tier="flex"), KEY)
             for t in poisson_times(CAPACITY / 2, DURATION_S, seed=7)]
    async with (
        rig_emulators(slots=SLOTS) as urls,
        router(router_raw(urls, slots=SLOTS, ttft_slo_s=SLO, extra=TENANTS)) as r,
        client_session() as session,
    ):
        shots = await open_loop(session, r.url, plan)
        batch_refused = sum(r.metric("lpu_router_requests_rejected_total", {
            "bucket": "small", "priority": "batch", "reason": reason})
            for reason in ("slo_ttft", "queue_full", "utilization"))

        async with session.post(r.url + "/v1/chat/completions", json=chat(1, stream=True),
                                headers=KEY | {"x-priority": "urgent"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "x-priority"
        (schedule,) = (await recorded(urls)).values()

    assert {s.status for s in shots} <= {200, 429}
    interactive = _ratio(shots, "interactive")
    assert interactive > _ratio(shots, "batch-header")
    assert interactive > _ratio(shots, "batch-flex")
    assert interactive >= 0.6
    assert batch_refused == sum(not s.admitted for s in shots if s.tag.startswith("batch"))
    # Whatever its class, every admitted request's first token was scheduled within the SLO of
    # its arrival at the backend, and batch was admitted only when predicted within its half.
    assert sorted(e.request_id for e in schedule) == sorted(s.request_id for s in shots
                                                            if s.admitted)
    assert not late_problems(schedule, SLO)
    assert not fifo_problems(schedule)
    assert all(s.predicted_ttft_s <= SLO / 2 for s in shots
               if s.admitted and s.tag.startswith("batch"))
