"""A failure the request caused is never blamed on a backend (issue: three bad requests took every
replica out of service).

The router runs as its own process (``lpu-router serve``, uvloop). Backends are either real
emulator processes or small fakes on loopback that fail exactly the requests a test says.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from live_processes import emulator_process, router_process
from prometheus_client.parser import text_string_to_metric_families
from stack import MODEL, Handler, chat, error_code, fake_backend, invariant_problems

pytestmark = pytest.mark.timeout(60)


def _toml(backends: list[str], *, mode: str = "off") -> str:
    urls = ", ".join(f'"{u}"' for u in backends)
    return f"""
[server]
port = 0
[admission]
mode = "{mode}"
[health]
interval_s = 0.2
eject_after_failures = 3
eject_for_s = 30
[[buckets]]
name = "short"
model = "{MODEL}"
artifact = "llama-3.1-8b-2k"
time_scale = 0.05
backends = [{urls}]
"""


async def _metrics(session: aiohttp.ClientSession, base: str) -> dict[tuple[str, str], float]:
    """``(sample name, sorted labels)`` -> value, from the router's /metrics."""
    async with session.get(base + "/metrics") as r:
        text = await r.text()
    assert not invariant_problems(text), invariant_problems(text)
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, json.dumps(s.labels, sort_keys=True))] = s.value
    return out


def _sample(metrics: dict[tuple[str, str], float], name: str, **labels: str) -> float:
    return metrics.get((name, json.dumps(labels, sort_keys=True)), 0.0)


def _poisoned(fail_all: bool = False) -> Handler:
    async def completion(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if fail_all or b"POISON" in body:
            return web.json_response({"error": {"message": "boom", "type": "server_error",
                                                 "param": None, "code": None}}, status=500)
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
            headers={"Set-Cookie": "backend_session=secret; Path=/"})
    return completion


async def test_poison_requests_never_eject_healthy_replicas(tmp_path: Path) -> None:
    async with fake_backend(_poisoned()) as a, fake_backend(_poisoned()) as b:
        cfg = tmp_path / "router.toml"
        cfg.write_text(_toml([a.url, b.url]))
        async with router_process(cfg) as (_, port), aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{port}"
            poison = {**chat(4), "messages": [{"role": "user", "content": "POISON"}]}
            for _ in range(6):
                async with s.post(base + "/v1/chat/completions", json=poison) as r:
                    assert r.status == 502, await r.text()
                    assert error_code(await r.read()) == "upstream_error"
            # Each poisoned request had one second opinion, then was not tried again.
            assert len(a.headers) + len(b.headers) == 12
            async with s.post(base + "/v1/chat/completions", json=chat(4)) as r:
                assert r.status == 200, await r.text()
            m = await _metrics(s, base)
            for fake in (a, b):
                assert _sample(m, "lpu_router_backend_up", bucket="short", backend=fake.url) == 1
            assert _sample(m, "lpu_router_request_faults_total", bucket="short") == 6
            assert _sample(m, "lpu_router_requests_finished_total", bucket="short",
                           outcome="failed") == 6


async def test_a_failing_replica_is_still_ejected(tmp_path: Path) -> None:
    async with fake_backend(_poisoned(fail_all=True)) as sick, \
            fake_backend(_poisoned()) as healthy:
        cfg = tmp_path / "router.toml"
        cfg.write_text(_toml([sick.url, healthy.url]))
        async with router_process(cfg) as (_, port), aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{port}"
            for _ in range(12):
                async with s.post(base + "/v1/chat/completions", json=chat(4)) as r:
                    assert r.status == 200, await r.text()
            m = await _metrics(s, base)
            # The healthy replica served every request the sick one failed: the sick one was
            # charged each time and is out after eject_after_failures (3) of them.
            assert len(sick.headers) == 3
            assert _sample(m, "lpu_router_backend_up", bucket="short", backend=sick.url) == 0
            assert _sample(m, "lpu_router_backend_up", bucket="short", backend=healthy.url) == 1
            assert _sample(m, "lpu_router_request_faults_total", bucket="short") == 0


async def test_credentials_and_cookies_do_not_cross_the_router(tmp_path: Path) -> None:
    async with fake_backend(_poisoned()) as fake:
        cfg = tmp_path / "router.toml"
        cfg.write_text(_toml([fake.url]))
        async with router_process(cfg) as (_, port), aiohttp.ClientSession() as s:
            headers = {"x-api-key": "k1", "api-key": "k2", "Authorization": "Bearer k3",
                       "Cookie": "c=1", "x-custom": "kept"}
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat(4),
                              headers=headers) as r:
                assert r.status == 200
                assert "Set-Cookie" not in r.headers
        sent = {k.lower() for k in fake.headers[0]}
        assert not sent & {"x-api-key", "api-key", "authorization", "cookie"}
        assert "x-custom" in sent


async def test_surrogates_gzip_bodies_and_gzip_bombs_leave_the_backends_up(tmp_path: Path) -> None:
    async with emulator_process(replicas=2) as urls:
        cfg = tmp_path / "router.toml"
        cfg.write_text(_toml(urls, mode="timeline"))
        async with router_process(cfg) as (_, port), aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{port}"
            lone = (b'{"model":"' + MODEL.encode() + b'","max_tokens":4,'
                    b'"messages":[{"role":"user","content":"\\ud800"}]}')
            for _ in range(6):
                async with s.post(base + "/v1/chat/completions", data=lone,
                                  headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 400, await r.text()
                    assert "surrogate" in (await r.json())["error"]["message"]
            packed = gzip.compress(json.dumps(chat(4)).encode())
            for _ in range(6):
                async with s.post(base + "/v1/chat/completions", data=packed,
                                  headers={"Content-Type": "application/json",
                                           "Content-Encoding": "gzip"}) as r:
                    assert r.status == 200, await r.text()
            bomb = gzip.compress(b'{"model":"' + MODEL.encode() + b'","messages":[{"role":'
                                 b'"user","content":"' + b"a" * (64 << 20) + b'"}]}', 9)
            async with s.post(base + "/v1/chat/completions", data=bomb,
                              headers={"Content-Type": "application/json",
                                       "Content-Encoding": "gzip"}) as r:
                assert r.status == 413, await r.text()
                assert error_code(await r.read()) == "request_too_large"
            async with s.post(base + "/v1/chat/completions", data=b"{}",
                              headers={"Content-Type": "application/json",
                                       "Content-Encoding": "br"}) as r:
                assert r.status == 415
                assert error_code(await r.read()) == "unsupported_content_encoding"
            m = await _metrics(s, base)
            for url in urls:
                assert _sample(m, "lpu_router_backend_up", bucket="short", backend=url) == 1
                for kind in ("status_5xx", "disconnected"):
                    assert _sample(m, "lpu_router_upstream_errors_total", bucket="short",
                                   backend=url, kind=kind) == 0
