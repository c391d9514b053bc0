"""Reload and drain against ``lpu-router serve`` as a subprocess: SIGHUP loses no request of
a client with a keep-alive pool; at the SIGTERM drain deadline every completion still running
ends as documented, whether its backend had sent nothing yet, its status line, or a stream."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from live_processes import config_toml, served_router
from prometheus_client import CollectorRegistry, generate_latest
from stack import (
    MODEL,
    assert_invariant,
    chat,
    emulator_options,
    error_code,
    fake_backend,
    http_exchange,
    post_counted,
    raw_post,
    router_config,
)

from lpu_emulator.server import start_emulators
from router.app import build_app
from router.server import Generation

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


async def test_sighup_reloads_lose_no_keep_alive_request(tmp_path: Path) -> None:
    # Requests of ~0.2 s: a few are in flight at each reload, more arrive while they finish.
    async with start_emulators(emulator_options(time_scale=1.0), 2) as urls:
        cfg = tmp_path / "router.toml"
        cfg.write_text(config_toml(urls, server={"drain_s": 5.0},
                                   bucket={"time_scale": 1.0}))
        async with served_router(cfg) as router:
            base = f"http://127.0.0.1:{router.port}"
            statuses: Counter[str] = Counter()

            async def one(session: aiohttp.ClientSession, i: int) -> None:
                await post_counted(session, base, chat(60, stream=i % 3 == 0), statuses)

            # A keep-alive pool at a steady 25 requests/s (open loop), three reloads meanwhile.
            connector = aiohttp.TCPConnector(limit=8)
            async with aiohttp.ClientSession(connector=connector) as session:
                tasks: list[asyncio.Task[None]] = []
                for i in range(100):
                    tasks.append(asyncio.create_task(one(session, i)))
                    if i in (20, 45, 70):
                        router.proc.send_signal(signal.SIGHUP)
                    await asyncio.sleep(0.04)
                await asyncio.gather(*tasks)
            assert statuses == {"200": 100}, statuses
            assert len(router.lines("reloaded http://")) == 3, router.log[-20:]
            router.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(router.proc.wait(), 30) == 0
        drained = router.lines("drained http://")
        assert len(drained) == 4 and all("0 cancelled" in d for d in drained), drained
        done = Counter(line["outcome"] for line in router.access()
                       if line["route"] == "/v1/chat/completions")
        assert done == {"completed": 100}, done


async def _slow_backend(request: web.Request) -> web.StreamResponse:
    """How the answer of each ``user`` comes: never (``status``), headers then nothing
    (``body``), one event then nothing (``stream``), whole after 0.3 s (``quick``)."""
    how = json.loads(await request.read()).get("user")
    if how == "quick":
        await asyncio.sleep(0.3)
        return web.json_response({"id": "q", "object": "chat.completion", "choices": [],
                                  "usage": {"completion_tokens": 1}})
    if how == "status":
        await asyncio.sleep(30)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if how == "stream"
                                       else "application/json"})
    await resp.prepare(request)
    await resp.write(b'data: {"id": "s", "choices": []}\n\n' if how == "stream" else b'{"id"')
    await asyncio.sleep(30)
    return resp


async def test_sigterm_deadline_ends_every_completion_as_documented(tmp_path: Path) -> None:
    async with fake_backend(_slow_backend) as backend:
        cfg = tmp_path / "router.toml"
        cfg.write_text(config_toml([backend.url], server={"drain_s": 1.0},
                                   bucket={"time_scale": 1.0}))
        async with served_router(cfg) as router:
            port = router.port
            answers = {how: asyncio.create_task(http_exchange(port, raw_post(
                {**chat(50, stream=how == "stream"), "user": how})))
                for how in ("status", "body", "stream", "quick")}
            for _ in range(100):  # bounded: the backend has all four
                if len(backend.headers) == 4:
                    break
                await asyncio.sleep(0.02)
            assert len(backend.headers) == 4
            router.proc.send_signal(signal.SIGTERM)
            got = {how: await asyncio.wait_for(task, 15) for how, task in answers.items()}
            assert await asyncio.wait_for(router.proc.wait(), 15) == 0

        assert got["quick"].startswith(b"HTTP/1.1 200"), got["quick"][:200]
        for how in ("status", "body"):  # a non-streamed request: the 503 JSON
            head, body = got[how].split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 503"), got[how][:300]
            assert error_code(body) == "shutting_down"
        stream = got["stream"]
        assert stream.startswith(b"HTTP/1.1 200")
        assert b'"code": "shutting_down"' in stream and b"drain deadline" in stream
        assert stream.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), stream[-200:]

        # Order of events in the router's log: the drain report after the four ends.
        log = router.log
        report = next(i for i, line in enumerate(log) if line.startswith("drained http://"))
        assert "4 in progress at start, 3 ended at the deadline, 0 cancelled" in log[report]
        ended = {json.loads(line)["request_id"]: json.loads(line) for line in log[:report]
                 if line.startswith('{"ts"')}
        outcomes = Counter((e["outcome"], e["status"]) for e in ended.values())
        # The stream's 200 had gone out before its end; the two others are the router's 503.
        assert outcomes == {("completed", 200): 1, ("failed", 200): 1, ("failed", 503): 2}, \
            outcomes
        assert sorted(e["reject_reason"] or "" for e in ended.values()
                      if e["status"] == 503) == ["shutdown", "shutdown"]
        assert all(e["model"] == MODEL for e in ended.values())


async def test_drain_deadline_counts_each_ending_once(tmp_path: Path) -> None:
    """The counters behind the log (in-process, the generation's own drain): each ended
    request is ``failed`` once, with ``upstream_errors{kind="shutdown"}``, and the books
    settle."""
    async with fake_backend(_slow_backend) as backend:
        config = router_config([backend.url], extra={"server": {"drain_s": 0.5}})
        registry = CollectorRegistry()
        app = build_app(config, registry=registry)
        gen = await Generation.start(app, config.server, "127.0.0.1", 0)
        port = gen.site.port
        answers = [asyncio.create_task(http_exchange(port, raw_post(
            {**chat(50, stream=how == "stream"), "user": how})))
            for how in ("status", "body", "stream")]
        for _ in range(100):  # bounded: the backend has all three
            if len(backend.headers) == 3:
                break
            await asyncio.sleep(0.02)
        report = await gen.drain(config.server.drain_s)
        got = [await asyncio.wait_for(task, 10) for task in answers]
    assert (report.in_progress_at_start, report.ended_at_deadline, report.left_at_close) \
        == (3, 3, 0)
    assert [g.split(b" ", 2)[1] for g in got] == [b"503", b"503", b"200"]

    def value(name: str, labels: dict[str, str]) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert value("lpu_router_upstream_errors_total", {"bucket": "short",
                                                      "backend": backend.url,
                                                      "kind": "shutdown"}) == 3
    assert value("lpu_router_requests_finished_total",
                 {"bucket": "short", "outcome": "failed"}) == 3
    assert_invariant(generate_latest(registry).decode())
