"""Rolling swap of a 2-replica bucket under steady open-loop load at 50% of its capacity, against
real emulators: one replica at a time (never both out of admission), no request lost (every
answer is a completion or an admission refusal, and the invariant settles), every replica reports
the target identity at the end, and the target is the bucket's stable version."""

from __future__ import annotations

import asyncio
import re
import tomllib
from importlib import resources
from typing import Any

import aiohttp
import pytest

from lpu_protocol.artifact import builtin_artifact, parse_artifact
from tests.open_loop import Planned, open_loop, poisson_times
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
TOKENS = 16
TARGET_VERSION = "2026.12.1"

pytestmark = pytest.mark.timeout(90)


def _target_toml() -> str:
    """The stable artifact recompiled: another version, the rig's slots, a short compile."""
    text = (resources.files("lpu_protocol") / "artifacts" / f"{ARTIFACT}.toml").read_text("utf-8")
    text = re.sub(r'^version = ".*"$', f'version = "{TARGET_VERSION}"', text, flags=re.M)
    text = re.sub(r"^slots = \d+$", f"slots = {SLOTS}", text, flags=re.M)
    return re.sub(r"^compile_time_s = .*$", "compile_time_s = 1.0", text, flags=re.M)


async def _watch(url: str, seen: list[dict[str, Any]], stop: asyncio.Event) -> None:
    """Sample ``/admin/buckets`` until ``stop``: the replicas' ready flags and the rollout."""
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            async with s.get(url + "/admin/buckets") as r:
                seen.append((await r.json())["buckets"]["small"])
            await asyncio.sleep(0.01)


async def test_rolling_swap_under_half_load_loses_nothing() -> None:
    target = parse_artifact(tomllib.loads(_target_toml()))
    capacity_rps = 2 * SLOTS / service_s(TOKENS)
    async with rig_emulators(slots=SLOTS, replicas=2) as urls:
        raw = router_raw(urls, slots=SLOTS, ttft_slo_s=1.0,
                         bucket={"stable_version": builtin_artifact(ARTIFACT).version},
                         admission={"load_poll_interval_s": 0.02})
        async with router(raw) as stack:
            plan = [Planned(t, f"r{i}", chat(TOKENS) | {"model": MODEL})
                    for i, t in enumerate(poisson_times(0.5 * capacity_rps, 4.0, seed=14))]
            seen: list[dict[str, Any]] = []
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
            down = [sum(not rep["ready"] for rep in b["replicas"]) for b in seen]
            assert max(down) == 1, down
            phases = {b["rollout"]["phase"] for b in seen if "rollout" in b}
            assert "compiling" in phases or "waiting_ready" in phases, phases
            # Nothing lost: every request completed or was refused at admission (429), none
            # failed; the router's counters settle.
            statuses = {shot.status for shot in shots}
            assert statuses <= {200, 429}, statuses
            assert sum(shot.status == 200 for shot in shots) > 0
            text = await assert_settled(stack)
            assert 'lpu_router_rollout_replicas_swapped{bucket="small"} 2.0' in text
            assert 'lpu_router_rollout_running{bucket="small"} 0.0' in text
