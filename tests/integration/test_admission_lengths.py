"""Output lengths: requests that stop early free their slot early, and degraded mode clamps an
allowance that would miss the end-to-end SLO instead of refusing the request."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from open_loop import Planned, open_loop, poisson_times
from recorded_schedule import fifo_problems, late_problems, recorded
from stack import (
    ARTIFACT,
    PER_TOKEN_S,
    PREFILL_S,
    chat,
    client_session,
    rig_emulators,
    router,
    router_raw,
    service_s,
)

from lpu_emulator.lengths import OutputLength

SLOTS = 2
MAX_TOKENS = 100
DURATION_S = 3.0


async def test_early_completions_free_slots_and_the_timeline_drains() -> None:
    """Lengths drawn (seeded) with mean 8 tokens under an allowance of 100: the router reserves
    the worst case (128 ms), each completion frees its slot when it really ends (~46 ms)."""
    slo = 0.2
    worst_capacity = SLOTS / service_s(MAX_TOKENS)
    async with (
        rig_emulators(slots=SLOTS, output_length=OutputLength("geometric", mean=8.0),
                  seed=11) as urls,
        router(router_raw(urls, slots=SLOTS, ttft_slo_s=slo)) as r,
        client_session() as session,
    ):
        plan = [Planned(t, "standard", chat(MAX_TOKENS, stream=True))
                for t in poisson_times(2.5 * worst_capacity, DURATION_S, seed=12)]
        shots = await open_loop(session, r.url, plan)
        await asyncio.sleep(0.2)  # a few /load polls after the last completion
        async with session.get(r.url + "/admin/buckets") as resp:
            assert resp.status == 200
            snap = (await resp.json())["buckets"]["small"]
        (schedule,) = (await recorded(urls)).values()

    admitted = [s for s in shots if s.admitted]
    assert sum(b'"finish_reason":"stop"' in s.body for s in admitted) > len(admitted) / 2
    # Every admitted request ran once, its first token scheduled within the SLO of its arrival;
    # a short reply freed its slot at its own last token (fifo_problems: no slot idles while
    # a request waits), not at the end of the allowance the router reserved.
    assert sorted(e.request_id for e in schedule) == sorted(s.request_id for s in admitted)
    assert not late_problems(schedule, slo)
    assert not fifo_problems(schedule)
    assert any(e.output_tokens < MAX_TOKENS for e in schedule)
    # More than the worst-case reservations alone would ever let through.
    assert len(admitted) > 1.3 * worst_capacity * DURATION_S, (len(admitted), worst_capacity)
    # Drained: nothing reserved, queued or predicted to wait; every ticket ended completed.
    assert (snap["in_flight"], snap["queue_depth"]) == (0, 0)
    assert snap["counts"]["finished"] == {"completed": len(admitted)}
    for replica in snap["replicas"]:
        assert replica["reserved"] == replica["queued"] == 0
        assert replica["slot_free_in_s"] == [0.0] * SLOTS
        assert replica["predicted_wait_s"] == 0.0
        assert replica["report"]["running"] == replica["report"]["waiting"] == 0


def _two_buckets(urls: list[str], e2e_slo_s: float) -> dict[str, Any]:
    raw = router_raw(urls, slots=SLOTS, ttft_slo_s=1.0,
                     bucket={"e2e_slo_s": e2e_slo_s, "degraded_min_tokens": 8})
    # The same backends under the artifact's own model name, without degraded mode.
    raw["buckets"].append({"name": "strict", "model": ARTIFACT, "artifact": ARTIFACT,
                           "slots": SLOTS, "time_scale": 0.5, "backends": urls,
                           "ttft_slo_s": 1.0, "e2e_slo_s": e2e_slo_s})
    return raw


async def test_degraded_mode_clamps_instead_of_refusing() -> None:
    e2e = 0.15
    margin = 0.005
    asked = 200  # 218 ms of service: over the 150 ms end-to-end SLO even on an idle replica
    fits = 1 + math.floor((e2e - margin - PREFILL_S) / PER_TOKEN_S + 1e-9)
    async with (
        rig_emulators(slots=SLOTS) as urls,
        router(_two_buckets(urls, e2e)) as r,
        client_session() as session,
    ):
        body = chat(asked)
        async with session.post(r.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            headers = resp.headers
            reply = await resp.json()
        assert headers["x-lpu-max-tokens-clamped"] == "degraded"
        assert headers["x-lpu-max-tokens-clamped-from"] == str(asked)
        assert headers["x-lpu-max-tokens"] == str(fits)
        assert reply["usage"]["completion_tokens"] == fits
        assert r.metric("lpu_router_max_tokens_clamped_total",
                        {"bucket": "small", "reason": "degraded"}) == 1
        assert r.metric("lpu_router_admission_decisions_total", {
            "bucket": "small", "priority": "standard", "decision": "admitted",
            "reason": "degraded"}) == 1

        # Without degraded mode the same request is refused; waiting would not help.
        body = body | {"model": ARTIFACT}
        async with session.post(r.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 429
            assert resp.headers["x-lpu-reject-reason"] == "slo_e2e"
            assert "retry-after" not in resp.headers
            assert "lower max_tokens" in (await resp.json())["error"]["message"]
