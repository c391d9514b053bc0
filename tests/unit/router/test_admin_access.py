"""Who may read ``/admin/*``: both admin endpoints answer alike (401 / 403 / 200)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from router.app import build_app
from router.config import parse_config
from router.server import running

ADMIN = "sk-admin-key"
TENANT = "sk-tenant-key"


@pytest.fixture
async def url() -> AsyncIterator[str]:
    cfg = parse_config({
        "server": {"admin_api_key": ADMIN},
        "admission": {"mode": "off"},
        "health": {"interval_s": 60.0},
        # Nothing listens on port 9: no request here reaches a backend.
        "buckets": [{"name": "s", "model": "m", "backends": ["http://127.0.0.1:9"],
                     "max_seq_len": 512, "max_output_tokens": 100, "slots": 1,
                     "prefill_ms": 1.0, "per_token_ms": 1.0}],
        "tenants": [{"name": "acme", "api_keys": [TENANT]}],
    })
    async with running(build_app(cfg, registry=CollectorRegistry())) as base:
        yield base


@pytest.mark.parametrize("path", ["/admin/backends", "/admin/buckets"],
                         ids=["backends", "buckets"])
@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (None, 401, "invalid_api_key"),
        ("Bearer sk-nope", 401, "invalid_api_key"),
        (f"Basic {ADMIN}", 401, "invalid_api_key"),
        (f"Bearer {TENANT}", 403, "permission_denied"),
        (f"Bearer {ADMIN}", 200, None),
    ],
    ids=["no-key", "unknown-key", "not-bearer", "tenant-key", "admin-key"],
)
async def test_admin_endpoints_answer_alike(url: str, path: str, authorization: str | None,
                                            status: int, code: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with aiohttp.ClientSession() as s, s.get(url + path, headers=headers) as r:
        assert r.status == status
        body = await r.json()
        if code is not None:
            assert body["error"]["code"] == code
            assert set(body["error"]) == {"message", "type", "param", "code"}
