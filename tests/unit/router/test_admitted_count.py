"""When ``lpu_router_requests_admitted_total`` counts a request.

Without a deadline for the backend (admission ``off``) nothing can refuse the request after the
decision, so it counts at once, while the backend is still working. With a deadline (the
timeline controller) the backend may still refuse it, so it counts once the backend took it:
for a non-streaming answer, when the answer comes.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from router.app import build_app
from router.config import parse_config
from router.server import running

BODY = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def held_backend(release: asyncio.Event, deadlines: list[str | None]) -> web.Application:
    """Answers a completion only once ``release`` is set; no ``/load`` (probed on readyz)."""

    async def chat(request: web.Request) -> web.Response:
        deadlines.append(request.headers.get("x-lpu-deadline-ms"))
        await release.wait()
        return web.json_response({"choices": [], "usage": {"completion_tokens": 4}})

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/readyz", readyz)
    return app


def admitted(reg: CollectorRegistry) -> float:
    return reg.get_sample_value("lpu_router_requests_admitted_total",
                                {"bucket": "s", "priority": "standard"}) or 0.0


@pytest.mark.parametrize(("mode", "counted_while_held"), [("off", 1.0), ("timeline", 0.0)],
                         ids=["off-at-the-decision", "timeline-when-the-backend-took-it"])
async def test_admitted_counts_at_the_decision_unless_the_backend_may_refuse(
        mode: str, counted_while_held: float) -> None:
    release = asyncio.Event()
    deadlines: list[str | None] = []
    async with running(held_backend(release, deadlines)) as backend:
        cfg = parse_config({
            "admission": {"mode": mode},
            "buckets": [{"name": "s", "model": "m", "backends": [backend], "max_seq_len": 512,
                         "max_output_tokens": 100, "slots": 2, "prefill_ms": 1.0,
                         "per_token_ms": 1.0, "ttft_slo_s": 10.0}],
        })
        reg = CollectorRegistry()
        async with running(build_app(cfg, registry=reg)) as url, aiohttp.ClientSession() as s:
            call = asyncio.create_task(s.post(url + "/v1/chat/completions", json=BODY))
            for _ in range(500):  # until the backend holds it
                if deadlines:
                    break
                await asyncio.sleep(0.01)
            assert len(deadlines) == 1
            assert (deadlines[0] is None) == (mode == "off")
            assert admitted(reg) == counted_while_held
            release.set()
            async with await call as resp:
                assert resp.status == 200
                await resp.read()
            assert admitted(reg) == 1.0
            assert reg.get_sample_value("lpu_router_requests_finished_total",
                                        {"bucket": "s", "outcome": "completed"}) == 1.0
