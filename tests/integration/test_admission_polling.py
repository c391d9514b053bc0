"""The ``/load`` poll is both the timeline's input and the backend's health check.

A fake backend answers ``/load`` the way the test says: a valid report (up, and the report
reaches ``/admin/buckets``), ``"ready": false`` or a malformed body or an error status (down: a
completion gets 503 ``no_backend`` at once), no ``/load`` at all (404: probed on ``/readyz``
instead), or nothing (stopped: down).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from stack import chat, client_session, router, router_raw

from router.app import POOL
from router.server import running

REPORT: dict[str, Any] = {"slots": 2, "running": 1, "waiting": 0,
                          "slot_free_in_s": [0.0, 0.25], "prefill_s": 0.04,
                          "per_token_s": 0.000893, "ready": True}


def _backend(state: dict[str, Any]) -> web.Application:
    async def load(request: web.Request) -> web.Response:
        mode = state["mode"]
        if mode == "missing":
            raise web.HTTPNotFound()
        if mode == "error":
            return web.json_response({"error": "boom"}, status=500)
        if mode == "malformed":
            return web.json_response(REPORT | {"slot_free_in_s": "soon"})
        return web.json_response(REPORT | {"ready": mode != "not_ready"})

    async def readyz(request: web.Request) -> web.Response:
        state["readyz"] += 1
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_get("/load", load)
    app.router.add_get("/readyz", readyz)
    return app


async def _until(check: Callable[[], bool], within_s: float = 2.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("mode", ["not_ready", "malformed", "error"])
async def test_a_bad_report_takes_the_backend_out(mode: str) -> None:
    state: dict[str, Any] = {"mode": "ok", "readyz": 0}
    async with running(_backend(state)) as backend, router(router_raw(
        [backend], slots=2, ttft_slo_s=1.0, admission={"load_poll_interval_s": 0.02},
    )) as r, client_session() as session:
        pool = r.app[POOL]
        await _until(lambda: pool.is_up("small", backend))
        async with session.get(r.url + "/admin/buckets") as resp:
            [replica] = (await resp.json())["buckets"]["small"]["replicas"]
        assert replica["report"]["running"] == 1
        assert replica["slot_free_in_s"][-1] > 0.1  # the reported busy slot is in the timeline

        state["mode"] = mode
        await _until(lambda: not pool.is_up("small", backend))
        async with session.post(r.url + "/v1/chat/completions", json=chat(4, stream=True)) as resp:
            assert resp.status == 503
            assert resp.headers["x-lpu-reject-reason"] == "no_backend"
            assert int(resp.headers["retry-after"]) >= 1

        state["mode"] = "ok"
        await _until(lambda: pool.is_up("small", backend))
        assert state["readyz"] == 0, "one check per backend: /load only"


async def test_without_load_the_health_path_is_probed() -> None:
    state: dict[str, Any] = {"mode": "missing", "readyz": 0}
    async with running(_backend(state)) as backend, router(router_raw(
        [backend], slots=2, ttft_slo_s=1.0, admission={"load_poll_interval_s": 0.02},
    )) as r:
        await _until(lambda: state["readyz"] >= 2)
        assert r.app[POOL].is_up("small", backend)


async def test_a_stopped_backend_is_down() -> None:
    async with running(_backend({"mode": "ok", "readyz": 0})) as gone:
        pass  # served once, now closed: its port refuses connections
    async with router(router_raw([gone], slots=2, ttft_slo_s=1.0,
                                 admission={"load_poll_interval_s": 0.02})) as r:
        pool = r.app[POOL]
        await _until(lambda: not pool.is_up("small", gone))
