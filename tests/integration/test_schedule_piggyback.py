"""The backend's whole schedule on every answer (``x-lpu-schedule``): the emulator sends it, the
router merges it into that replica's timeline when the status line comes, and the client never
sees it.

Work the router cannot know of (a request sent to the backend directly, as another router
would) shows in the router's timeline right after its next answer from that backend, not at
the next ``/load`` poll (here a minute away).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from stack import (
    MODEL,
    Stack,
    chat,
    client_session,
    rig_emulators,
    router,
    router_raw,
    service_s,
)

from lpu_protocol.headers import X_LPU_DEADLINE_MS, X_LPU_SCHEDULE
from lpu_protocol.load_report import ScheduleReport
from router.app import ADMITTER

HIDDEN_TOKENS = 1000
"""The hidden request: ~0.93 s on the rig's schedule."""


async def _stream(session: aiohttp.ClientSession, url: str, tokens: int,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    body = chat(tokens, stream=True) | {"model": MODEL, "ignore_eos": True}
    async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


@pytest.mark.timeout(30)
async def test_the_emulator_sends_its_schedule_on_answers_and_refusals() -> None:
    async with rig_emulators(slots=1) as (url,), client_session() as s:
        first = asyncio.create_task(_stream(s, url, 16))
        await asyncio.sleep(0.01)
        # The slot is taken for ~50 ms: a 1 ms deadline cannot be met.
        status, headers, _ = await _stream(s, url, 16, {X_LPU_DEADLINE_MS: "1"})
        assert status == 429
        refused = ScheduleReport.from_header(headers[X_LPU_SCHEDULE])
        assert (refused.slots, refused.running, refused.waiting) == (1, 1, 0)
        assert 0 < refused.slot_free_in_s[0] <= service_s(16)
        status, headers, _ = await first
        assert status == 200
        admitted = ScheduleReport.from_header(headers[X_LPU_SCHEDULE])
        # Written right after the request was placed: it holds it, for its whole service time.
        assert (admitted.running, admitted.waiting) == (1, 0)
        assert admitted.slot_free_in_s == (pytest.approx(service_s(16), abs=1e-3),)


@pytest.mark.timeout(30)
async def test_a_whole_answer_carries_the_schedule_of_its_last_token() -> None:
    async with rig_emulators(slots=1) as (url,), client_session() as s:
        body = chat(16) | {"model": MODEL, "ignore_eos": True}
        async with s.post(url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            at_end = ScheduleReport.from_header(r.headers[X_LPU_SCHEDULE])
    # Not the schedule of its admission (its whole service time ahead): the slot is free, or
    # about to be, when the body is written.
    assert at_end.slot_free_in_s[0] < service_s(16) / 4, at_end


def _replica(stack: Stack) -> dict[str, Any]:
    snap = stack.app[ADMITTER].snapshot()
    replica: dict[str, Any] = snap["buckets"]["small"]["replicas"][0]
    return replica


def _merged(stack: Stack) -> float:
    total = 0.0
    for family in stack.registry.collect():
        for sample in family.samples:
            if sample.name == "lpu_router_schedule_reports_total":
                total += sample.value if sample.labels["result"] == "merged" else 0.0
    return total


@pytest.mark.timeout(30)
@pytest.mark.parametrize("on", [True, False], ids=["merged", "switched-off"])
async def test_the_router_learns_hidden_work_from_an_answer(on: bool) -> None:
    async with rig_emulators(slots=1) as urls, router(router_raw(
            urls, slots=1, ttft_slo_s=5.0,
            admission={"load_poll_interval_s": 60.0, "schedule_from_answers": on},
    )) as stack, client_session() as s:
        hidden = asyncio.create_task(_stream(s, urls[0], HIDDEN_TOKENS))
        await asyncio.sleep(0.05)
        assert _replica(stack)["slot_free_in_s"] == [0.0]  # the router knows nothing of it
        async with s.post(stack.url + "/v1/chat/completions",
                          json=chat(16, stream=True) | {"ignore_eos": True}) as r:
            assert r.status == 200
            assert X_LPU_SCHEDULE not in r.headers  # the backend's load stays with the router
            free = _replica(stack)["slot_free_in_s"][0]
            await r.read()
        hidden.cancel()
    hidden_s, own_s = service_s(HIDDEN_TOKENS), service_s(16)
    if on:
        # Behind the hidden request: what is left of it (it started <= 0.25 s ago on any
        # machine that ran this test in time) and this request's own service time.
        assert free > hidden_s - 0.25, (free, hidden_s)
        assert _merged(stack) >= 1
    else:
        assert free <= own_s, (free, own_s)  # its own reservation only
        assert _merged(stack) == 0


@pytest.mark.timeout(30)
async def test_a_whole_answer_through_the_router_hides_the_schedule() -> None:
    async with rig_emulators(slots=1) as urls, router(router_raw(
            urls, slots=1, ttft_slo_s=5.0)) as stack, client_session() as s:
        async with s.post(stack.url + "/v1/chat/completions", json=chat(8)) as r:
            assert r.status == 200
            assert X_LPU_SCHEDULE not in r.headers
            await r.read()
        # ... and the router read it: the answer's schedule was merged or skipped.
        counted = sum(sample.value for family in stack.registry.collect()
                      for sample in family.samples
                      if sample.name == "lpu_router_schedule_reports_total")
        assert counted == 1
