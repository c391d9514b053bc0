"""Which path each backend is checked on, and what its answers mean (real loopback servers).

Each case is a backend serving only the paths it names, each with a status and a JSON body: the
emulator (an LPU ``/load``), vLLM (``/load`` with its own ``{"server_load": n}``, ``/health``,
``/v1/models``), a bare OpenAI-compatible server (``/v1/models`` only), and the edge cases.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from router.config import HealthConfig, parse_config
from router.load_poller import LoadPoller
from router.metrics import make_metrics
from router.pool import BackendPool
from router.probe import Prober
from router.server import running

REPORT: dict[str, Any] = {"slots": 2, "running": 1, "waiting": 0,
                          "slot_free_in_s": [0.0, 0.25], "prefill_s": 0.04,
                          "per_token_s": 0.000893, "ready": True}
MODELS = {"object": "list", "data": [{"id": "m", "object": "model"}]}
Routes = dict[str, tuple[int, Any]]


@asynccontextmanager
async def _backend(routes: Routes) -> AsyncIterator[str]:
    """A loopback server answering GET on exactly ``routes`` (404 elsewhere)."""
    app = web.Application()
    for path, (status, body) in routes.items():
        async def answer(request: web.Request, status: int = status, body: Any = body
                         ) -> web.Response:
            return web.json_response(body, status=status)
        app.router.add_get(path, answer)
    async with running(app) as url:
        yield url


CASES: list[tuple[str, Routes, str | None, str | None, bool]] = [
    # id, routes, health.path, the path found (None: not decided), up
    ("emulator", {"/load": (200, REPORT), "/readyz": (200, {})}, None, "/load", True),
    ("vllm", {"/load": (200, {"server_load": 0}), "/health": (200, None),
              "/v1/models": (200, MODELS)}, None, "/health", True),
    ("openai-only", {"/v1/models": (200, MODELS)}, None, "/v1/models", True),
    ("readyz-without-load", {"/readyz": (200, {}), "/health": (200, {})}, None, "/readyz", True),
    ("load-needs-a-key", {"/load": (401, {}), "/health": (200, None)}, None, "/health", True),
    ("health-failing", {"/health": (503, {}), "/v1/models": (200, MODELS)}, None, "/health",
     False),
    ("lpu-not-ready", {"/load": (200, REPORT | {"ready": False})}, None, "/load", False),
    ("lpu-malformed", {"/load": (200, REPORT | {"slot_free_in_s": "soon"}),
                       "/health": (200, {})}, None, "/load", False),
    ("load-5xx-decides-nothing", {"/load": (503, {}), "/health": (200, {})}, None, None, False),
    ("configured-path", {"/ping": (200, {}), "/health": (200, {})}, "/ping", "/ping", True),
    ("configured-path-missing", {"/health": (200, {})}, "/ping", None, False),
    ("nothing-served", {}, None, None, False),
]


@pytest.mark.parametrize(("routes", "configured", "found", "up"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_the_first_served_path_becomes_the_check(
        routes: Routes, configured: str | None, found: str | None, up: bool) -> None:
    prober = Prober(HealthConfig(path=configured))
    async with _backend(routes) as url, aiohttp.ClientSession() as session:
        for _ in range(2):  # the second check asks the path found (or searches again)
            check = await prober.check(session, url)
            assert prober.path_of(url) == found
            assert check.ok is up, check.why


@pytest.mark.parametrize(("health", "candidates"), [
    ({}, ("/load", "/readyz", "/health", "/v1/models")),
    ({"path": "/ping"}, ("/load", "/ping")),
    ({"path": "/load"}, ("/load",)),
], ids=["default", "configured", "configured-load"])
def test_the_paths_tried_follow_the_config(health: dict[str, str],
                                           candidates: tuple[str, ...]) -> None:
    cfg = parse_config({"health": health, "buckets": [
        {"name": "s", "model": "m", "artifact": "llama-3.1-8b-2k",
         "backends": ["http://127.0.0.1:1"]}]})
    assert Prober(cfg.health).candidates == candidates


async def test_each_backend_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "lpu_router.health")
    prober = Prober(HealthConfig())
    vllm = {"/load": (200, {"server_load": 0}), "/health": (200, None)}
    async with _backend(vllm) as one, _backend({}) as two, aiohttp.ClientSession() as session:
        for _ in range(3):
            await prober.check(session, one)
            await prober.check(session, two)
    lines = [r.getMessage() for r in caplog.records]
    assert sum(one in m and "no LPU /load" in m and "/health" in m for m in lines) == 1, lines
    assert sum(two in m and "serves none of the health paths" in m for m in lines) == 1, lines


async def test_no_answer_decides_nothing() -> None:
    """A backend that does not answer in time is down, and its path is found when it answers."""
    slow = {"on": True}

    async def health(request: web.Request) -> web.Response:
        if slow["on"]:
            await asyncio.sleep(1.0)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/health", health)
    prober = Prober(HealthConfig(timeout_s=0.05))
    async with running(app) as url, aiohttp.ClientSession() as session:
        check = await prober.check(session, url)
        assert not check.ok and "TimeoutError" in check.why
        assert prober.path_of(url) is None
        slow["on"] = False
        assert (await prober.check(session, url)).ok
        assert prober.path_of(url) == "/health"


async def test_a_report_ready_or_not_is_returned() -> None:
    prober = Prober(HealthConfig())
    for ready in (True, False):
        async with _backend({"/load": (200, REPORT | {"ready": ready})}) as url, \
                aiohttp.ClientSession() as session:
            check = await prober.check(session, url)
            assert check.ok is ready and check.report is not None
            assert check.report.ready is ready and check.report.slot_free_in_s == (0.0, 0.25)
            assert check.sent_at <= check.received_at


async def test_the_checks_feed_the_pool() -> None:
    """Admission ``off`` (no sink): a 503 takes the backend down, a 200 brings it back, a dead
    port is down; every change reaches ``on_change``."""
    state = {"status": 200}

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=state["status"])

    app = web.Application()
    app.router.add_get("/health", health)
    async with running(app) as url, aiohttp.ClientSession() as session:
        dead = "http://127.0.0.1:1"  # nothing listens on port 1
        cfg = parse_config({"admission": {"mode": "off"}, "buckets": [
            {"name": "s", "model": "m", "artifact": "llama-3.1-8b-2k", "backends": [url, dead]}]})
        changes: list[tuple[str, str, bool]] = []
        pool = BackendPool(cfg.buckets, cfg.health, clock=lambda: 0.0,
                           metrics=make_metrics(CollectorRegistry()),
                           on_change=lambda b, u, up: changes.append((b, u, up)))
        poller = LoadPoller(pool, None, prober=Prober(cfg.health), interval_s=1.0,
                            load_interval_s=0.05)

        async def round_() -> None:
            for u in pool.urls():
                await poller.poll(session, u)

        await round_()
        assert pool.ready() == {"s": 1}
        assert changes == [("s", dead, False)]
        state["status"] = 503
        await round_()
        assert pool.ready() == {"s": 0}
        state["status"] = 200
        await round_()
        assert pool.is_up("s", url)
        assert changes == [("s", dead, False), ("s", url, False), ("s", url, True)]


class _Sink:
    def __init__(self) -> None:
        self.reports: list[tuple[str, str]] = []

    def observe_load(self, bucket: str, backend: str, report: Any, now: float, *,
                     sent_at: float | None = None) -> None:
        self.reports.append((bucket, backend))


async def test_only_load_is_polled_fast() -> None:
    """With a timeline to feed, a ``/load`` backend (or one not found yet) is checked every
    ``load_interval_s``; a backend checked on a health path every ``interval_s``; without a
    timeline (admission ``off``) every backend every ``interval_s``."""
    vllm = {"/load": (200, {"server_load": 0}), "/health": (200, None)}
    async with _backend({"/load": (200, REPORT)}) as lpu, _backend(vllm) as other, \
            aiohttp.ClientSession() as session:
        cfg = parse_config({"buckets": [{"name": "s", "model": "m", "artifact": "llama-3.1-8b-2k",
                                         "backends": [lpu, other]}]})
        pool = BackendPool(cfg.buckets, cfg.health, clock=lambda: 0.0,
                           metrics=make_metrics(CollectorRegistry()),
                           on_change=lambda b, u, up: None)
        sink = _Sink()
        fast = LoadPoller(pool, sink, prober=Prober(cfg.health), interval_s=1.0,
                          load_interval_s=0.05)
        slow = LoadPoller(pool, None, prober=Prober(cfg.health), interval_s=1.0,
                          load_interval_s=0.05)
        assert [fast.interval_of(u) for u in (lpu, other)] == [0.05, 0.05]  # not found yet
        for poller in (fast, slow):
            for u in (lpu, other):
                assert await poller.poll(session, u)
        assert [fast.interval_of(u) for u in (lpu, other)] == [0.05, 1.0]
        assert [slow.interval_of(u) for u in (lpu, other)] == [1.0, 1.0]
        assert sink.reports == [("s", lpu)]  # vLLM's /load is not a report

