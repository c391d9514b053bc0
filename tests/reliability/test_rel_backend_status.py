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
from live_processes import StartRouterProcess, config_toml
from stack import MODEL, StartFake

_ANSWERS = {
    400: (b'{"error": {"message": "min_tokens must be an integer", "type":'
          b' "invalid_request_error", "param": "min_tokens", "code": "invalid_type"}}',
          "application/json"),
    404: (b'{"error": {"message": "no such adapter", "type": "invalid_request_error",'
          b' "param": null, "code": "model_not_found"}}', "application/json"),
    422: (b"unprocessable: prompt has a NUL byte", "text/plain; charset=utf-8"),
}


async def _answer(request: web.Request) -> web.Response:
    status = int(request.headers["x-test-status"])
    body, kind = _ANSWERS[status]
    return web.Response(status=status, body=body, headers={"Content-Type": kind})


@pytest.mark.asyncio
async def test_a_backends_own_4xx_reaches_the_client_whole(
        tmp_path: Path, fake_backend: StartFake, router_process: StartRouterProcess) -> None:
    backend = await fake_backend(_answer)
    config = tmp_path / "router.toml"
    config.write_text(config_toml([backend.url], admission="timeline"), "utf-8")
    served = await router_process(config)
    base = f"http://127.0.0.1:{served.port}"
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            for status, (want, kind) in _ANSWERS.items():
                async with session.post(base + "/v1/chat/completions",
                                        json={**body, "stream": stream},
                                        headers={"x-test-status": str(status)}) as r:
                    assert r.status == status, (stream, status, await r.text())
                    assert await r.read() == want
                    assert r.headers["Content-Type"] == kind
        async with session.get(base + "/metrics") as r:
            text = await r.text()
    errors = [line for line in text.splitlines()
              if line.startswith("lpu_router_upstream_errors_total{")
              and not line.endswith(" 0.0")]
    assert errors == [], errors  # the request's fault, not the backend's
