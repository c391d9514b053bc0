"""Only a streamed first token is a first token: a non-streamed answer arrives whole, at the end
of its generation, and must teach the timeline and the adaptive margin nothing.

Before this was so, every non-streamed request reported a "first token" one whole generation
late: the prediction error (and so the adaptive margin) grew by the generation time and the
timeline pinned starts late, refusing traffic the backend had room for.
"""

from __future__ import annotations

from admission_harness import PER_TOKEN_S, chat_body, client_session, emulators, router, router_raw

TOKENS = 200  # a generation of 200 * per-token time: far above any margin


async def test_non_streamed_answers_do_not_feed_the_prediction_error() -> None:
    generation_s = (TOKENS - 1) * PER_TOKEN_S
    async with (
        emulators(slots=2) as urls,
        router(router_raw(urls, slots=2, ttft_slo_s=1.0)) as r,
        client_session() as session,
    ):
        for _ in range(3):
            async with session.post(r.url + "/v1/chat/completions",
                                    json=chat_body(TOKENS, stream=False)) as resp:
                assert resp.status == 200
                await resp.read()
        labels = {"bucket": "small"}
        assert r.metric("lpu_router_prediction_error_seconds_count", labels) == 0
        assert r.metric("lpu_router_ttft_seconds_count", labels) == 0
        assert r.metric("lpu_router_e2e_seconds_count", labels) == 3

        async with session.post(r.url + "/v1/chat/completions",
                                json=chat_body(TOKENS)) as resp:
            assert resp.status == 200
            await resp.read()
        assert r.metric("lpu_router_prediction_error_seconds_count", labels) == 1
        assert r.metric("lpu_router_ttft_seconds_count", labels) == 1
        # The one streamed first token came about when predicted, not a generation late.
        late = r.metric("lpu_router_prediction_error_seconds_bucket", labels | {"le": "0.05"})
        assert late == 1, generation_s
