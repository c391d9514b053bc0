"""Two router processes share the same backends and are overloaded at once.

Each router knows only its own reservations. Two ``lpu-router serve`` subprocesses with the same
config sit in front of the same two emulated replicas (one slot each) and each is offered the
whole capacity, so together twice of it. Neither can see the other's work except through the
backends' ``/load`` reports (merged every 50 ms) and the backends' own deadline check
(``x-lpu-deadline-ms`` -> 429 ``deadline_unreachable`` -> the router corrects its timeline and
tries the other replica, or refuses with ``backend_deadline``). Every request either router
admits still gets its first token within the SLO.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from live_processes import served_router
from open_loop import Planned, open_loop, poisson_times
from prometheus_client.parser import text_string_to_metric_families
from recorded_schedule import fifo_problems, late_problems, recorded
from stack import ARTIFACT, MODEL, SCALE, chat, client_session, rig_emulators, service_s

SLOTS = 1
REPLICAS = 2
TOKENS = 16
D = service_s(TOKENS)
SLO = 3 * D
CAPACITY = SLOTS * REPLICAS / D
DURATION_S = 5.0


def _config(urls: list[str]) -> str:
    backends = ", ".join(f'"{u}"' for u in urls)
    return f"""
[server]
host = "127.0.0.1"
port = 0

[admission]
mode = "timeline"
load_poll_interval_s = 0.05

[[buckets]]
name = "small"
model = "{MODEL}"
artifact = "{ARTIFACT}"
time_scale = {SCALE}
slots = {SLOTS}
backends = [{backends}]
ttft_slo_s = {SLO:.4f}
"""


async def _counter(session_url: str, name: str, labels: dict[str, str]) -> float:
    async with client_session() as s, s.get(session_url + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


@pytest.mark.timeout(60)
async def test_two_routers_share_the_backends_and_keep_every_promise(tmp_path: Path) -> None:
    async with rig_emulators(slots=SLOTS, replicas=REPLICAS) as urls:
        config = tmp_path / "router.toml"
        config.write_text(_config(urls), "utf-8")
        async with (
            served_router(config, log_level="WARNING") as first,
            served_router(config, log_level="WARNING") as second,
            client_session() as session,
        ):
            one, two = (f"http://127.0.0.1:{p.port}" for p in (first, second))
            await asyncio.sleep(0.2)  # first /load polls
            loads = [
                open_loop(session, url, [Planned(t, name, chat(TOKENS, stream=True)) for t in
                                         poisson_times(CAPACITY, DURATION_S, seed=seed)])
                for name, url, seed in (("one", one, 3), ("two", two, 4))
            ]
            shots = [s for batch in await asyncio.gather(*loads) for s in batch]
            deadline_refusals = 0.0
            for url in (one, two):
                deadline_refusals += await _counter(
                    url, "lpu_router_admission_decisions_total",
                    {"decision": "rejected", "reason": "backend_deadline"})
        schedules = await recorded(urls)

    admitted = [s for s in shots if s.admitted]
    refused = [s for s in shots if s.status == 429]
    assert len(admitted) + len(refused) == len(shots), sorted({s.status for s in shots})
    assert {s.tag for s in admitted} == {"one", "two"}
    # Every promise either router made was kept on the backends' own schedules: each admitted
    # request ran once, its first token scheduled within the SLO of its arrival; each replica
    # served FIFO on its one slot (never two at once, whichever router sent the request).
    ran = [e for entries in schedules.values() for e in entries]
    assert sorted(e.request_id for e in ran) == sorted(s.request_id for s in admitted)
    assert not late_problems(ran, SLO)
    for entries in schedules.values():
        assert not fifo_problems(entries)
    # The backends' deadline check did part of the work (the mechanism is exercised) ...
    assert deadline_refusals > 0
    # ... and the two routers together still used the backends well.
    assert len(admitted) / DURATION_S >= 0.6 * CAPACITY, (len(admitted), CAPACITY)
