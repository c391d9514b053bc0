"""A backend's own error answers (4xx the router does not handle itself) reach the client as
the backend sent them: status, body byte for byte, content type; the backend is not blamed.

The router reads an error answer's body once to classify it (``map_upstream_status``), then
relays it: the body must survive the second read (a regression found by the OpenAPI fuzz test:
a backend's 400 reached the client with an empty body)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from live_processes import served_router
from stack import MODEL

_ANSWERS = {
    400: (b'{"error": {"message": "min_tokens must be an integer", "type":'
          b' "invalid_request_error", "param": "min_tokens", "code": "invalid_type"}}',
          "application/json"),
    404: (b'{"error": {"message": "no such adapter", "type": "invalid_request_error",'
          b' "param": null, "code": "model_not_found"}}', "application/json"),
    422: (b"unprocessable: prompt has a NUL byte", "text/plain; charset=utf-8"),
}


def _backend() -> web.Application:
    async def complete(request: web.Request) -> web.Response:
        status = int(request.headers.get("x-test-status", "400"))
        body, kind = _ANSWERS[status]
        return web.Response(status=status, body=body, headers={"Content-Type": kind})

    async def load(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_get("/load", load)
    app.router.add_get("/health", health)
    return app


@pytest.mark.asyncio
async def test_a_backends_own_4xx_reaches_the_client_whole(tmp_path: Path) -> None:
    runner = web.AppRunner(_backend(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = tmp_path / "router.toml"
    config.write_text(f"""
[server]
host = "127.0.0.1"
port = 0
[[buckets]]
name = "small"
model = "{MODEL}"
backends = ["http://127.0.0.1:{port}"]
max_seq_len = 2048
max_output_tokens = 256
slots = 4
prefill_ms = 20.0
per_token_ms = 1.0
ttft_slo_s = 5.0
""", "utf-8")
    try:
        async with served_router(config) as served, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{served.port}/v1/chat/completions"
            body = {"model": MODEL, "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}]}
            for stream in (False, True):
                for status, (want, kind) in _ANSWERS.items():
                    async with session.post(url, json={**body, "stream": stream},
                                            headers={"x-test-status": str(status)}) as r:
                        assert r.status == status, (stream, status, await r.text())
                        assert await r.read() == want
                        assert r.headers["Content-Type"] == kind
            async with session.get(f"http://127.0.0.1:{served.port}/metrics") as r:
                text = await r.text()
            errors = [line for line in text.splitlines()
                      if line.startswith("lpu_router_upstream_errors_total{")
                      and not line.endswith(" 0.0")]
            assert errors == [], errors  # the request's fault, not the backend's
    finally:
        await runner.cleanup()
