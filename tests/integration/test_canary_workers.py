"""Canary and rollout across a pod's workers (``lpu-router serve CONFIG --workers 2``, real
processes; emulators in this process): a rollback judged by one worker stops the canary in the
other, which saw no traffic (so it cannot have judged it itself); a clear and a promotion sent
to one worker act in both; a rollout runs in the worker the call reached, the other refuses a
second one (409) and shows the first one's progress, and at its end both know the new stable
version (router.canary_shared)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from live_processes import StartRouterProcess, per_worker

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT"),
              pytest.mark.timeout(90)]

MODEL = "llama-3.1-8b-instant"
ARTIFACT = "llama-3.1-8b-2k"
SCALE = 2.0
CANARY_VERSION = "2026.12.0-canary"
TARGET_VERSION = "2026.12.1"
STABLE_VERSION = builtin_artifact(ARTIFACT).version
MIN_REQUESTS = 3
SETTLE_S = 3.0
"""Longest wait for the other worker to follow (it reads the shared state every 0.1 s)."""


def _config(urls: list[str]) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = 0
[admission]
mode = "timeline"
load_poll_interval_s = 0.05
[health]
interval_s = 0.5
[[buckets]]
name = "small"
model = "{MODEL}"
artifact = "{ARTIFACT}"
time_scale = {SCALE}
backends = {json.dumps(urls)}
ttft_slo_s = 1.0
stable_version = "{STABLE_VERSION}"
[buckets.canary]
version = "{CANARY_VERSION}"
share = 0.5
max_prediction_error_ms = 10.0
min_requests = {MIN_REQUESTS}
"""


def _target_toml() -> str:
    text = (resources.files("lpu_protocol") / "artifacts" / f"{ARTIFACT}.toml").read_text("utf-8")
    text = re.sub(r'^version = ".*"$', f'version = "{TARGET_VERSION}"', text, flags=re.M)
    return re.sub(r"^compile_time_s = .*$", "compile_time_s = 0.25", text, flags=re.M)


async def _bucket(s: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    """(worker index, bucket ``small``) from ``/admin/buckets`` on ``s``'s connection."""
    async with s.get(f"http://127.0.0.1:{port}/admin/buckets") as r:
        doc = await r.json()
    return doc["worker"]["index"], doc["buckets"]["small"]


async def _other(port: int, worker: int) -> dict[str, Any]:
    """Bucket ``small`` as the worker other than ``worker`` sees it."""
    answers = await per_worker(port, "/admin/buckets", 2)
    return answers[1 - worker]["buckets"]["small"]


async def _until(port: int, what: str, ok: Any) -> dict[int, dict[str, Any]]:
    """Both workers' bucket ``small`` once ``ok(bucket)`` holds for both."""
    loop = asyncio.get_running_loop()
    until = loop.time() + SETTLE_S
    while True:
        answers = {i: a["buckets"]["small"]
                   for i, a in (await per_worker(port, "/admin/buckets", 2)).items()}
        if all(ok(b) for b in answers.values()):
            return answers
        assert loop.time() < until, (what, answers)
        await asyncio.sleep(0.1)


async def _post(port: int, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s, \
            s.post(f"http://127.0.0.1:{port}{path}", json=body) as r:
        return r.status, await r.json()


async def test_canary_and_rollout_state_is_pod_wide(
        tmp_path: Path, router_process: StartRouterProcess) -> None:
    art = builtin_artifact(ARTIFACT)
    stable = EmulatorOptions(artifact=art, time_scale=SCALE, tick_s=0.001)
    slow = dataclasses.replace(stable, artifact=dataclasses.replace(art, version=CANARY_VERSION),
                               actual_prefill_factor=1.1, actual_per_token_factor=1.1)
    async with start_emulators(stable, replicas=1) as stable_urls, \
            start_emulators(slow, replicas=1) as (canary_url,):
        cfg = tmp_path / "router.toml"
        cfg.write_text(_config([*stable_urls, canary_url]))
        router = await router_process(cfg, "--workers", "2")
        port = router.port
        await per_worker(port, "/admin/buckets", 2)  # both serve
        await asyncio.sleep(0.5)  # both have their first /load reports
        body = {"model": MODEL, "max_tokens": 8, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}
        # One connection: every request reaches one worker, W.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            w, _ = await _bucket(s, port)
            for _ in range(40):
                async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                  json=body) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                index, bucket = await _bucket(s, port)
                assert index == w
                if bucket["canary"]["state"] == "rolled_back":
                    break
            assert bucket["canary"]["state"] == "rolled_back", bucket["canary"]
            judged = bucket["canary"]["by_role"]["canary"]["first_tokens"]
            assert judged == MIN_REQUESTS

        # The other worker follows, without having judged anything itself.
        answers = await _until(port, "rollback seen by both",
                               lambda b: b["canary"]["state"] == "rolled_back")
        other = answers[1 - w]["canary"]
        assert other["by_role"]["canary"]["first_tokens"] == 0, other
        assert other["admitted"] == 0, other
        assert f"judged by worker {w}" in other["reason"], other

        # Clear, then promote: each call reaches one worker, both follow.
        status, cleared = await _post(port, "/admin/buckets/small/canary/clear")
        assert (status, cleared["state"]) == (200, "active"), cleared
        await _until(port, "clear seen by both", lambda b: b["canary"]["state"] == "active")
        status, promoted = await _post(port, "/admin/buckets/small/canary/promote")
        assert (status, promoted["state"]) == (200, "none"), promoted
        await _until(port, "promotion seen by both", lambda b: (
            b["canary"]["state"], b["canary"]["stable_version"]) == ("none", CANARY_VERSION))

        # A rollout runs in one worker; the other refuses a second one and shows it.
        status, started = await _post(port, "/admin/buckets/small/rollout",
                                      {"toml": _target_toml()})
        assert status == 202, started
        owner = started["worker"]["index"]
        refused: dict[str, Any] | None = None
        for _ in range(100):  # until a call reaches the other worker
            status, doc = await _post(port, "/admin/buckets/small/rollout",
                                      {"toml": _target_toml()})
            assert status == 409, doc
            if "in worker" in doc["error"]["message"]:  # not the owner's own "already"
                refused = doc
                break
        assert refused is not None and status == 409, (status, refused)
        assert refused["error"]["code"] == "rollout_in_progress"
        assert f"in worker {owner}" in refused["error"]["message"], refused
        seen = await _other(port, owner)
        assert seen["rollout"]["worker"] == owner, seen.get("rollout")
        done = await _until(port, "rollout done", lambda b: b.get("rollout", {}).get("state")
                            == "done" and b["canary"]["stable_version"] == TARGET_VERSION)
        assert done[1 - owner]["rollout"]["worker"] == owner
        assert done[owner]["rollout"]["swapped"] == [*stable_urls, canary_url]
        # SIGTERM: the pod drains and exits (and removes its directory, the state file too).
        router.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(router.proc.wait(), 40) == 0
