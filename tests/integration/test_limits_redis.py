"""Limits across processes with a real redis-server: a tenant limited to 60 requests per minute
sending 200 in 10 s through 2 router processes (separate ``lpu-router serve`` processes, and
``--workers 2``) gets 60 admitted, not 120; with Redis stopped mid-run ``on_store_error``
decides (``open``: admitted on the local decision, ``closed``: 503 ``limits_unavailable``),
nothing hangs, and once Redis is back admission goes through it again; a Redis that never
answers costs each request at most ``timeout_ms``, and only while it probes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from live_processes import StartEmulatorProcess, StartRouterProcess, config_toml
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer
from stack import Stack, chat, rig_emulators, router, router_raw

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT"),
              pytest.mark.timeout(120)]

KEY = {"Authorization": "Bearer sk-acme"}
ANSWER_BOUND_S = 5.0
"""Every request of these tests is answered within this (none waits on a stalled store)."""


def _limited_config(urls: list[str], redis_url: str, *, rpm: int = 60,
                    on_store_error: str = "open") -> str:
    tenants = {"name": "acme", "api_keys": ["sk-acme"], "requests_per_minute": rpm}
    return (config_toml(urls, admission="timeline", bucket={"time_scale": 0.05})
            + "[[tenants]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in tenants.items())
            + f'[limits]\nstore = "redis"\nredis_url = "{redis_url}"\n'
            + f'on_store_error = "{on_store_error}"\ntimeout_ms = 1000\n')


async def _open_loop(ports: list[int], n: int, over_s: float) -> Counter[int]:
    """``n`` requests evenly over ``over_s`` seconds, taking turns over ``ports``: statuses."""
    statuses: Counter[int] = Counter()
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i * over_s / n - loop.time()))
            url = f"http://127.0.0.1:{ports[i % len(ports)]}/v1/chat/completions"
            async with asyncio.timeout(ANSWER_BOUND_S), \
                    s.post(url, json=chat(4), headers=KEY) as r:
                await r.read()
                statuses[r.status] += 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return statuses


async def _store_calls(port: int) -> dict[str, float]:
    """``lpu_router_limit_store_calls_total`` by result, from the router's ``/metrics``."""
    async with aiohttp.ClientSession() as s, \
            s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out = {"ok": 0.0, "over": 0.0, "error": 0.0}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == "lpu_router_limit_store_calls_total":
                out[sample.labels["result"]] += sample.value
    return out


async def test_two_router_processes_share_one_tenant_limit(
        tmp_path: Path, redis_server: RedisServer, emulator_process: StartEmulatorProcess,
        router_process: StartRouterProcess) -> None:
    urls = await emulator_process(time_scale=0.05)
    ports = []
    for i in range(2):  # two replicas: separate processes, no shared files, one Redis
        cfg = tmp_path / f"router-{i}.toml"
        cfg.write_text(_limited_config(urls, redis_server.url))
        ports.append((await router_process(cfg, log_level="WARNING")).port)
    statuses = await _open_loop(ports, 200, 10.0)
    assert set(statuses) <= {200, 429}, statuses
    assert 59 <= statuses[200] <= 61, statuses  # each router alone would have admitted 60
    calls = [await _store_calls(port) for port in ports]
    assert all(c["error"] == 0 and c["ok"] > 0 for c in calls), calls  # both asked Redis
    assert sum(c["ok"] for c in calls) == statuses[200]


async def test_two_workers_share_one_tenant_limit(
        tmp_path: Path, redis_server: RedisServer, emulator_process: StartEmulatorProcess,
        router_process: StartRouterProcess) -> None:
    urls = await emulator_process(time_scale=0.05)
    cfg = tmp_path / "router.toml"
    cfg.write_text(_limited_config(urls, redis_server.url))
    pod = await router_process(cfg, "--workers", "2", log_level="WARNING")
    statuses = await _open_loop([pod.port], 200, 10.0)
    assert set(statuses) <= {200, 429}, statuses
    assert 59 <= statuses[200] <= 61, statuses
    calls = await _store_calls(pod.port)  # the pod's: both workers' calls
    assert (calls["ok"], calls["error"]) == (statuses[200], 0), calls


async def test_memory_limits_with_two_workers_are_a_config_error(
        tmp_path: Path, emulator_process: StartEmulatorProcess) -> None:
    cfg = tmp_path / "router.toml"
    cfg.write_text(_limited_config(["http://127.0.0.1:9"], "redis://127.0.0.1:9/0")
                   .replace('store = "redis"', 'store = "memory"'))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "serve", str(cfg), "--workers", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, (out, err)
    assert b'use store = "redis"' in err, err


# -- Redis stopped mid-run (the router in this process: its registry is read directly) --------

def _raw(urls: list[str], redis_url: str, policy: str, **limits: Any) -> dict[str, Any]:
    return router_raw(urls, slots=8, ttft_slo_s=1.0, bucket={"max_concurrency": 64}, extra={
        "tenants": [{"name": "acme", "api_keys": ["sk-acme"], "requests_per_minute": 100_000}],
        # A generous timeout unless the test is about it: a busy 2-core machine may take more
        # than the default 25 ms to open ten connections at once.
        "limits": {"store": "redis", "redis_url": redis_url, "on_store_error": policy,
                   "backoff_s": 0.3, "timeout_ms": 1000, **limits}})


@contextlib.asynccontextmanager
async def _stack(redis_url: str, policy: str, **limits: Any) -> AsyncIterator[Stack]:
    async with rig_emulators(slots=8) as urls, router(_raw(urls, redis_url, policy,
                                                             **limits)) as r:
        yield r


async def _burst(r: Stack, n: int) -> list[tuple[int, str | None, dict[str, str]]]:
    """``n`` requests at once: (status, error code, headers) of each, each within the bound."""
    async with aiohttp.ClientSession() as s:

        async def one() -> tuple[int, str | None, dict[str, str]]:
            async with asyncio.timeout(ANSWER_BOUND_S), \
                    s.post(r.url + "/v1/chat/completions", json=chat(4), headers=KEY) as resp:
                body = await resp.json()
                code = body["error"]["code"] if resp.status != 200 else None
                return resp.status, code, dict(resp.headers)

        return await asyncio.gather(*(one() for _ in range(n)))


def _calls(r: Stack) -> dict[str, float]:
    return {result: r.metric("lpu_router_limit_store_calls_total", {"result": result})
            for result in ("ok", "over", "error")}


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_redis_stopped_mid_run_then_back(redis_server: RedisServer, policy: str) -> None:
    async with _stack(redis_server.url, policy) as r:
        assert [s for s, _, _ in await _burst(r, 10)] == [200] * 10
        assert _calls(r) == {"ok": 10, "over": 0, "error": 0}
        assert r.metric("lpu_router_limit_store_up", {}) == 1

        redis_server.stop()
        down = await _burst(r, 20)
        if policy == "open":  # the local decision alone
            assert [s for s, _, _ in down] == [200] * 20
        else:
            assert [(s, c) for s, c, _ in down] == [(503, "limits_unavailable")] * 20
            assert all(int(h["Retry-After"]) >= 1 for _, _, h in down)
            assert {h["x-lpu-reject-reason"] for _, _, h in down} == {"limits_unavailable"}
        assert r.metric("lpu_router_limit_store_up", {}) == 0
        errors = r.metric("lpu_router_limit_store_errors_total", {"kind": "connection"})
        # At once: the first call fails, the rest follow the policy during the back-off.
        assert errors >= 1 and _calls(r)["error"] == errors
        assert _calls(r)["ok"] == 10
        admitted = r.metric("lpu_router_requests_admitted_total",
                            {"bucket": "small", "priority": "standard"})
        assert admitted == (30 if policy == "open" else 10)

        redis_server.start()
        await asyncio.sleep(0.35)  # the back-off ends; the next request probes
        back = await _burst(r, 1)
        assert back[0][0] == 200
        assert r.metric("lpu_router_limit_store_up", {}) == 1
        assert [s for s, _, _ in await _burst(r, 10)] == [200] * 10
        assert _calls(r)["ok"] == 21, _calls(r)  # through Redis again, no stale connection


async def _silent_server() -> tuple[asyncio.Server, int]:
    """Accepts connections and never answers: a Redis that hangs."""
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_a_store_that_never_answers_costs_only_its_timeout(policy: str) -> None:
    server, port = await _silent_server()
    async with server, _stack(f"redis://127.0.0.1:{port}/0", policy, timeout_ms=25) as r:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = [a for _ in range(30) for a in await _burst(r, 1)]  # one after another
        elapsed = loop.time() - started
        want = (200, None) if policy == "open" else (503, "limits_unavailable")
        assert [(s, c) for s, c, _ in answers] == [want] * 30
        timeouts = r.metric("lpu_router_limit_store_errors_total", {"kind": "timeout"})
        # The first call times out; then one probe per back-off (0.3 s), the others not asked.
        assert 1 <= timeouts <= 1 + elapsed / 0.3 + 1, (timeouts, elapsed)
        assert timeouts < 30
        assert r.metric("lpu_router_limit_store_up", {}) == 0
