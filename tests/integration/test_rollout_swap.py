"""Rolling swap of a 2-replica bucket under steady open-loop load at 50 % of its capacity,
against real emulators.

The load is constant-rate (one request every ``1 / rate`` seconds, ``rate`` = half the bucket's
capacity, computed from the artifact's exact service time and slots): so while one replica is
out for its swap, the load offered equals the capacity of the replica left up, exactly.

Asserted:

* one replica at a time (never both out of admission), and the swap was seen under way;
* **no request lost**: every request was answered 200 with all its tokens; each appears exactly
  once on the emulators' recorded schedules, completed with all its tokens; the router's
  admitted and completed counts and the emulators' completed count equal the requests sent,
  and the invariant settles;
* **goodput during the swap >= the capacity of the replicas left up**: for each replica's swap
  window (from the first ``/admin/buckets`` sample showing it out of admission to the first
  showing it back), goodput is the offered rate times the share of requests arriving at the
  emulators in that window whose first token was within the TTFT SLO *on the recorded
  schedule*. The offered rate equals the capacity left up, so the bound holds iff that share
  is 1; the schedule of the replica left up also never runs more than its slots;
* every replica reports the target identity at the end, and the target is the bucket's stable
  version.
"""

from __future__ import annotations

import asyncio
import re
import time
import tomllib
from importlib import resources
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lpu_protocol.artifact import builtin_artifact, parse_artifact
from tests.open_loop import Planned, open_loop
from tests.recorded_schedule import Scheduled, fifo_problems, late_problems, recorded
from tests.stack import (
    ARTIFACT,
    MODEL,
    assert_settled,
    chat,
    rig_emulators,
    router,
    router_raw,
    service_s,
)

SLOTS = 2
REPLICAS = 2
TOKENS = 16
TTFT_SLO_S = 1.0
LOAD_S = 4.0
TARGET_VERSION = "2026.12.1"

pytestmark = pytest.mark.timeout(90)


def _target_toml() -> str:
    """The stable artifact recompiled: another version, the rig's slots, a short compile."""
    text = (resources.files("lpu_protocol") / "artifacts" / f"{ARTIFACT}.toml").read_text("utf-8")
    text = re.sub(r'^version = ".*"$', f'version = "{TARGET_VERSION}"', text, flags=re.M)
    text = re.sub(r"^slots = \d+$", f"slots = {SLOTS}", text, flags=re.M)
    return re.sub(r"^compile_time_s = .*$", "compile_time_s = 1.0", text, flags=re.M)


async def _watch(url: str, seen: list[tuple[float, dict[str, Any]]], stop: asyncio.Event
                 ) -> None:
    """Sample ``/admin/buckets`` until ``stop``: (monotonic time of the answer, the bucket).
    ``time.monotonic`` is the emulators' schedule clock too (same machine)."""
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            async with s.get(url + "/admin/buckets") as r:
                bucket = (await r.json())["buckets"]["small"]
            seen.append((time.monotonic(), bucket))
            await asyncio.sleep(0.01)


def _windows(seen: list[tuple[float, dict[str, Any]]], urls: list[str]
             ) -> dict[str, tuple[float, float]]:
    """Each replica's swap window: from the first sample showing it out of admission to the
    first later sample showing it back in."""
    out: dict[str, tuple[float, float]] = {}
    for url in urls:
        ready = [(t, next(r["ready"] for r in b["replicas"] if r["url"] == url))
                 for t, b in seen]
        start = next(t for t, ok in ready if not ok)
        out[url] = (start, next(t for t, ok in ready if ok and t > start))
    return out


def _concurrency(entries: list[Scheduled]) -> int:
    """Most requests running at once on one replica's schedule."""
    events = sorted([(e.start, 1) for e in entries if e.held_slot]
                    + [(e.end, -1) for e in entries if e.held_slot])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


async def test_rolling_swap_under_half_load_loses_nothing_and_keeps_goodput() -> None:
    target = parse_artifact(tomllib.loads(_target_toml()))
    service = service_s(TOKENS)
    capacity_rps = REPLICAS * SLOTS / service
    rate = 0.5 * capacity_rps
    left_up_rps = (REPLICAS - 1) * SLOTS / service
    async with rig_emulators(slots=SLOTS, replicas=REPLICAS) as urls:
        raw = router_raw(urls, slots=SLOTS, ttft_slo_s=TTFT_SLO_S,
                         bucket={"stable_version": builtin_artifact(ARTIFACT).version},
                         admission={"load_poll_interval_s": 0.02})
        async with router(raw) as stack:
            plan = [Planned(i / rate, f"r{i}", chat(TOKENS) | {"model": MODEL})
                    for i in range(int(LOAD_S * rate))]
            seen: list[tuple[float, dict[str, Any]]] = []
            stop = asyncio.Event()
            watcher = asyncio.create_task(_watch(stack.url, seen, stop))
            async with aiohttp.ClientSession() as s:
                load = asyncio.create_task(open_loop(s, stack.url, plan))
                await asyncio.sleep(0.5)
                async with s.post(stack.url + "/admin/buckets/small/rollout",
                                  json={"toml": _target_toml()}) as r:
                    assert r.status == 202, await r.text()
                    started = await r.json()
                assert started["state"] == "running"
                shots = await load
                for _ in range(200):  # the rollout ends within its compile times and polls
                    async with s.get(stack.url + "/admin/buckets") as r:
                        rollout = (await r.json())["buckets"]["small"]["rollout"]
                    if rollout["state"] != "running":
                        break
                    await asyncio.sleep(0.05)
                stop.set()
                await watcher
                assert rollout["state"] == "done", rollout
                assert rollout["swapped"] == urls
                for url in urls:
                    async with s.get(url + "/load") as r:
                        doc = await r.json()
                    assert (doc["artifact"], doc["version"], doc["ready"]) == (
                        target.name, TARGET_VERSION, True), doc
                    assert doc.get("digest") in (None, target.digest)
                async with s.get(stack.url + "/admin/buckets") as r:
                    canary = (await r.json())["buckets"]["small"]["canary"]
                assert canary["stable_version"] == TARGET_VERSION
            # Never both replicas out of admission at once, and the swap was seen under way.
            down = [sum(not rep["ready"] for rep in b["replicas"]) for _, b in seen]
            assert max(down) == 1, down
            phases = {b["rollout"]["phase"] for _, b in seen if "rollout" in b}
            assert "compiling" in phases or "waiting_ready" in phases, phases

            # Nothing lost: every request answered whole, once on the schedules, counted once.
            bad = [(shot.tag, shot.status) for shot in shots
                   if shot.status != 200 or b'"completion_tokens":' + str(TOKENS).encode()
                   not in shot.body.replace(b" ", b"")]
            assert not bad, bad
            schedules = await recorded(urls)
            entries = [e for es in schedules.values() for e in es]
            ids = sorted(e.request_id for e in entries)
            assert ids == sorted(shot.request_id for shot in shots)
            assert all(e.state == "done" and e.output_tokens == TOKENS for e in entries), [
                e for e in entries if e.state != "done" or e.output_tokens != TOKENS]
            text = await assert_settled(stack)
            sent = len(plan)
            admitted = sum(sample.value for fam in text_string_to_metric_families(text)
                           for sample in fam.samples
                           if sample.name == "lpu_router_requests_admitted_total")
            assert admitted == sent
            assert stack.finished("completed", "small") == sent
            assert 'lpu_router_rollout_replicas_swapped{bucket="small"} 2.0' in text
            assert 'lpu_router_rollout_running{bucket="small"} 0.0' in text

            # Goodput in each swap window, on the recorded schedules.
            for url, (w0, w1) in _windows(seen, urls).items():
                arrived = [e for e in entries if w0 <= e.arrival <= w1]
                assert arrived, (url, w0, w1)
                late = late_problems(arrived, TTFT_SLO_S)
                in_slo = len(arrived) - len(late)
                goodput = rate * in_slo / len(arrived)
                assert goodput >= left_up_rps, (url, late)
                [other] = [u for u in urls if u != url]
                assert _concurrency([e for e in schedules[other]
                                     if e.start <= w1 and e.end >= w0]) <= SLOTS
            for url, es in schedules.items():
                assert not fifo_problems(es), (url, fifo_problems(es))
