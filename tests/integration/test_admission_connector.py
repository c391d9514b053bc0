"""No hidden queue: every admitted request is at its backend at once, and the admission
controller's schedule is the one the client sees.

Twelve streams are sent together to one replica with four slots (100 tokens each, D = 128 ms):
three waves. If the router's connection pool held some of them back, the backend would not see
all twelve; it does (``/load``: 4 running, 8 waiting), and the backend's own exact schedule
has the three waves the router predicted.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from admission_harness import (
    Planned,
    chat_body,
    client_session,
    emulators,
    open_loop,
    router,
    router_raw,
    service_s,
)

from router.app import UPSTREAM

SLOTS = 4
STREAMS = 12
TOKENS = 100
D = service_s(TOKENS)


async def _backend_sees_all(session: aiohttp.ClientSession, backend: str) -> dict[str, int]:
    """The backend's counts once every stream reached it (or the last seen, after ~D)."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + D
    while time.monotonic() < deadline:
        async with session.get(backend + "/load") as r:
            load = await r.json()
        seen = {"running": load["running"], "waiting": load["waiting"]}
        if seen["running"] + seen["waiting"] == STREAMS:
            break
        await asyncio.sleep(0.005)
    return seen


async def test_admitted_streams_never_wait_in_the_router() -> None:
    async with (
        emulators(slots=SLOTS) as urls,
        router(router_raw(urls, slots=SLOTS, ttft_slo_s=4 * D)) as r,
        client_session() as session,
    ):
        session_out = r.app[UPSTREAM].session
        assert session_out is not None
        connector = session_out.connector
        assert connector is not None
        assert (connector.limit, connector.limit_per_host) == (0, 0)

        plan = [Planned(0.0, str(i), chat_body(TOKENS)) for i in range(STREAMS)]
        shots, seen = await asyncio.gather(open_loop(session, r.url, plan),
                                           _backend_sees_all(session, urls[0]))

    assert seen == {"running": SLOTS, "waiting": STREAMS - SLOTS}
    assert all(s.admitted for s in shots)
    predicted = sorted(float(s.headers["x-lpu-predicted-ttft-ms"]) / 1e3 for s in shots)

    def wave(ttft_s: float) -> int:
        return round((ttft_s - service_s(1)) / D)

    # Three waves, one service time apart, as the timeline placed them.
    assert [wave(p) for p in predicted] == [i // SLOTS for i in range(STREAMS)], predicted
    # The backend's own exact schedule (x_groq: queue_time = start - arrival, prompt_time =
    # prefill) has the waves the router predicted: no wall clock here, only which service
    # time each stream started in (arrival skew is a few ms, a wave is D apart). Which stream
    # is in which wave may differ: the twelve upstream connections open concurrently, so the
    # backend's FIFO order is not always the router's (the waves, and so the SLO, are the same).
    served = []
    for s in shots:
        usage = _groq_usage(s.body)
        served.append(usage["queue_time"] + usage["prompt_time"])
    assert sorted(map(wave, served)) == sorted(map(wave, predicted)), (served, predicted)


def _groq_usage(body: bytes) -> dict[str, float]:
    """``x_groq.usage`` of a stream's last chunk (the emulator's schedule of the request)."""
    for line in reversed(body.split(b"\n")):
        if line.startswith(b"data: {") and b'"x_groq"' in line:
            usage: dict[str, float] = json.loads(line[6:])["x_groq"]["usage"]
            return usage
    raise AssertionError(f"no x_groq usage in {body[-300:]!r}")
