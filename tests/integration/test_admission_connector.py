"""No hidden queue: every admitted request is at its backend at once, and the admission
controller's schedule is the one the client sees.

Twelve streams are sent together to one replica with four slots (100 tokens each, D = 128 ms):
three waves. If the router's connection pool held some of them back, they would reach the
backend only as slots free and start at once; on the backend's recorded schedule eight of the
twelve waited in the backend's own queue instead, and its exact schedule has the three waves
the router predicted.
"""

from __future__ import annotations

from open_loop import Planned, open_loop
from recorded_schedule import fifo_problems, recorded
from stack import chat, client_session, rig_emulators, router, router_raw, service_s

from router.app import UPSTREAM

SLOTS = 4
STREAMS = 12
TOKENS = 100
D = service_s(TOKENS)


async def test_admitted_streams_never_wait_in_the_router() -> None:
    async with (
        rig_emulators(slots=SLOTS) as urls,
        # The answers' schedules are not merged here: this test is about the connector. An
        # answer that comes back while the burst is still being admitted carries a schedule
        # that may already hold later requests of the burst, which the merge counts as unseen
        # (it errs late, by design: test_schedule_piggyback), so a prediction could be a wave
        # late; how often depends on how fast the upstream answers come back.
        router(router_raw(urls, slots=SLOTS, ttft_slo_s=4 * D,
                          admission={"schedule_from_answers": False})) as r,
        client_session() as session,
    ):
        session_out = r.app[UPSTREAM].session
        assert session_out is not None
        connector = session_out.connector
        assert connector is not None
        assert (connector.limit, connector.limit_per_host) == (0, 0)

        plan = [Planned(0.0, str(i), chat(TOKENS, stream=True)) for i in range(STREAMS)]
        shots = await open_loop(session, r.url, plan)
        (schedule,) = (await recorded(urls)).values()

    assert all(s.admitted for s in shots)
    assert len(schedule) == STREAMS and not fifo_problems(schedule)
    # Four started on arrival, eight waited at the backend: none waited in the router.
    assert sum(e.start > e.arrival for e in schedule) == STREAMS - SLOTS
    predicted = sorted(float(s.headers["x-lpu-predicted-ttft-ms"]) / 1e3 for s in shots)

    def wave(ttft_s: float) -> int:
        return round((ttft_s - service_s(1)) / D)

    # Three waves, one service time apart, as the timeline placed them.
    assert [wave(p) for p in predicted] == [i // SLOTS for i in range(STREAMS)], predicted
    # The backend's recorded schedule has the waves the router predicted: which service time
    # each stream's first token falls in (arrival skew is a few ms, a wave is D apart). Which
    # stream is in which wave may differ: the twelve upstream connections open concurrently, so
    # the backend's FIFO order is not always the router's (the waves, and the SLO, are the same).
    served = [e.ttft_s for e in schedule]
    assert sorted(map(wave, served)) == sorted(map(wave, predicted)), (served, predicted)
