"""API keys: tenants, admin key, never logged nor forwarded; the router only talks to the
backends it was configured with, and strips hop-by-hop headers."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web
from stack import (
    FakeBackend,
    Stack,
    StartFake,
    StartRouter,
    assert_settled,
    chat,
    close_hard,
    error_code,
    open_raw,
    post,
    router_config,
)

KEY = "sk-tenant-secret-0123456789"
ADMIN = "sk-admin-secret-9876543210"


async def _ok(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response({"choices": [], "usage": {"completion_tokens": 1}})


@pytest.fixture
async def backend(fake_backend: StartFake) -> FakeBackend:
    return await fake_backend(_ok)


@pytest.fixture
async def stack(backend: FakeBackend, router_stack: StartRouter) -> Stack:
    return await router_stack(router_config([backend.url], extra={
        "server": {"admin_api_key": ADMIN},
        "tenants": [{"name": "acme", "api_keys": [KEY], "priority": "interactive",
                     "requests_per_minute": 1000}],
    }))


async def test_keys_map_to_tenants_and_are_never_logged_nor_forwarded(
        stack: Stack, backend: FakeBackend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    got, _, raw = await post(stack, chat(), headers={
        "Authorization": f"Bearer {KEY}", "Cookie": f"k={KEY}", "Connection": "x-secret",
        "X-Secret": KEY, "Proxy-Authorization": f"Bearer {KEY}", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Upgrade": "h2c"})
    assert got == 200, raw
    got, _, raw = await post(stack, chat(), headers={"Authorization": "Bearer sk-wrong-" + KEY})
    assert (got, error_code(raw)) == (401, "invalid_api_key")
    got, _, raw = await post(stack, chat())
    assert (got, error_code(raw)) == (401, "invalid_api_key")
    await assert_settled(stack)
    sent = backend.headers[0]
    lowered = {k.lower() for k in sent}
    for hop in ("authorization", "cookie", "x-secret", "proxy-authorization", "keep-alive",
                "te", "upgrade"):
        assert hop not in lowered, sent
    assert KEY not in json.dumps(sent)
    assert sent["Host"].startswith("127.0.0.1")
    access = [line for r in caplog.records if r.name == "lpu_router.access"
              for line in r.getMessage().splitlines()]
    assert access and any('"tenant":"acme"' in line for line in access)
    assert all(KEY not in r.getMessage() for r in caplog.records)
    assert "sk-wrong" not in caplog.text and KEY not in caplog.text


@pytest.mark.parametrize(("auth", "status"), [
    (None, 401), (f"Bearer {KEY}", 403), ("Bearer " + ADMIN[:-1], 401), (f"Basic {ADMIN}", 401),
    (f"Bearer {ADMIN}", 200),
], ids=["none", "tenant-key", "near-miss", "basic", "admin"])
async def test_admin_endpoints_need_the_admin_key(stack: Stack, auth: str | None,
                                                  status: int) -> None:
    import aiohttp

    headers = {"Authorization": auth} if auth else {}
    async with aiohttp.ClientSession() as s, s.get(stack.url + "/admin/backends",
                                                   headers=headers) as r:
        assert r.status == status
        if status == 401:
            assert error_code(await r.read()) == "invalid_api_key"
    await assert_settled(stack)


async def test_host_and_absolute_uri_never_pick_the_upstream(stack: Stack,
                                                             backend: FakeBackend) -> None:
    body = json.dumps(chat()).encode()
    head = (b"POST http://evil.invalid:9/v1/chat/completions HTTP/1.1\r\n"
            b"Host: evil.invalid:9\r\nX-Forwarded-Host: evil.invalid\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    reader, writer = await open_raw(stack, head)
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.startswith(b"HTTP/1.1 200"), line
    await close_hard(writer)
    assert len(backend.headers) == 1  # the configured backend served it
    assert "evil" not in backend.headers[0]["Host"]
    await assert_settled(stack)
