"""Only a streamed first token is a first token: a non-streamed answer arrives whole, at the end
of its generation, and must teach the timeline and the adaptive margin nothing.

Before this was so, every non-streamed request reported a "first token" one whole generation
late: the prediction error (and so the adaptive margin) grew by the generation time and the
timeline pinned starts late, refusing traffic the backend had room for.
"""

from __future__ import annotations

import pytest
from recorded_schedule import recorded_by_id
from stack import PREFILL_S, chat, client_session, rig_emulators, router, router_raw

TOKENS = 200  # a generation of 200 * per-token time: far above any margin


async def test_non_streamed_answers_do_not_feed_the_prediction_error() -> None:
    async with (
        rig_emulators(slots=2) as urls,
        router(router_raw(urls, slots=2, ttft_slo_s=1.0)) as r,
        client_session() as session,
    ):
        for _ in range(3):
            async with session.post(r.url + "/v1/chat/completions",
                                    json=chat(TOKENS)) as resp:
                assert resp.status == 200
                await resp.read()
        labels = {"bucket": "small"}
        assert r.metric("lpu_router_prediction_error_seconds_count", labels) == 0
        assert r.metric("lpu_router_ttft_seconds_count", labels) == 0
        assert r.metric("lpu_router_e2e_seconds_count", labels) == 3

        async with session.post(r.url + "/v1/chat/completions",
                                json=chat(TOKENS, stream=True)) as resp:
            assert resp.status == 200
            await resp.read()
            rid, predicted_ms = resp.headers["x-request-id"], resp.headers[
                "x-lpu-predicted-ttft-ms"]
        assert r.metric("lpu_router_prediction_error_seconds_count", labels) == 1
        assert r.metric("lpu_router_ttft_seconds_count", labels) == 1
        (scheduled,) = (await recorded_by_id(urls))[rid]

    # The non-streamed answers left the timeline nothing to pin: the router predicted the
    # streamed request's first token exactly where the backend scheduled it, one prefill
    # after its arrival at a free slot (the header has microsecond resolution).
    assert scheduled.ttft_s == pytest.approx(PREFILL_S, abs=1e-9)
    assert float(predicted_ms) / 1e3 == pytest.approx(scheduled.ttft_s, abs=1e-6)
