"""Tenant limits end to end, counted in the process and in Redis: the ``x-ratelimit-*`` headers
count down on every response and the limit is a 429 with ``Retry-After`` (the first request
leaves the 60 s window); ``/admin/buckets`` is for the admin key only."""

from __future__ import annotations

import re

import aiohttp
import pytest
from stack import MODEL, client_session, rig_emulators, router, router_raw

RPM = 4
TPM = 400
TENANTS = {
    "server": {"admin_api_key": "sk-admin"},
    "tenants": [{"name": "acme", "api_keys": ["sk-acme"], "requests_per_minute": RPM,
                 "tokens_per_minute": TPM}],
}
KEY = {"Authorization": "Bearer sk-acme"}
RESET = re.compile(r"^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")
LIMIT_HEADERS = [f"x-ratelimit-{what}-{unit}" for unit in ("requests", "tokens")
                 for what in ("limit", "remaining", "reset")]


def _body(max_tokens: int, model: str = MODEL) -> dict[str, object]:
    return {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Count to three."}]}


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, object]
                ) -> tuple[int, dict[str, str], dict[str, object]]:
    async with session.post(url + "/v1/chat/completions", json=body, headers=KEY) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.json()


def _limits(headers: dict[str, str]) -> tuple[int, int]:
    assert set(LIMIT_HEADERS) <= set(headers), sorted(headers)
    assert headers["x-ratelimit-limit-requests"] == str(RPM)
    assert headers["x-ratelimit-limit-tokens"] == str(TPM)
    assert RESET.match(headers["x-ratelimit-reset-requests"]), headers
    assert RESET.match(headers["x-ratelimit-reset-tokens"]), headers
    return (int(headers["x-ratelimit-remaining-requests"]),
            int(headers["x-ratelimit-remaining-tokens"]))


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_ratelimit_headers_count_down_and_the_limit_is_a_429(
        store: str, request: pytest.FixtureRequest) -> None:
    extra: dict[str, object] = dict(TENANTS)
    if store == "redis":
        # A generous timeout: the test is about the counts, not a slow store.
        extra["limits"] = {"store": "redis", "timeout_ms": 1000,
                           "redis_url": request.getfixturevalue("redis_server").url}
    async with (
        rig_emulators(slots=4) as urls,
        router(router_raw(urls, slots=4, ttft_slo_s=1.0, extra=extra)) as r,
        client_session() as session,
    ):
        # Larger than a whole minute's tokens: refused, and waiting cannot make it fit.
        status, headers, body = await _post(session, r.url, _body(TPM + 1))
        assert (status, headers["x-lpu-reject-reason"]) == (429, "tenant_tpm")
        assert _limits(headers) == (RPM, TPM)

        # Every response of the tenant carries the headers, errors included.
        status, headers, _ = await _post(session, r.url, _body(8, model="gpt-4o"))
        assert status == 404
        assert _limits(headers) == (RPM, TPM)

        seen = []
        for _ in range(RPM):
            status, headers, body = await _post(session, r.url, _body(8))
            assert status == 200, body
            seen.append(_limits(headers))
        assert [req for req, _ in seen] == list(range(RPM - 1, -1, -1))
        tokens = [tok for _, tok in seen]
        assert tokens == sorted(tokens, reverse=True) and len(set(tokens)) == RPM

        status, headers, body = await _post(session, r.url, _body(8))
        assert status == 429
        assert headers["x-lpu-reject-reason"] == "tenant_rpm"
        error = body["error"]
        assert isinstance(error, dict) and error["code"] == "rate_limit_exceeded"
        assert "requests per minute" in str(error["message"])
        # The first request leaves the 60 s window 60 s after it came (no refill before).
        assert 55_000 < int(headers["retry-after-ms"]) <= 60_000
        assert int(headers["retry-after"]) == -(-int(headers["retry-after-ms"]) // 1000)
        assert _limits(headers)[0] == 0
        assert r.metric("lpu_router_requests_rejected_total", {
            "bucket": "small", "priority": "standard", "reason": "tenant_rpm"}) == 1
        calls = [r.metric("lpu_router_limit_store_calls_total", {"result": result})
                 for result in ("ok", "over")]
        # In Redis, one script call per request the local decision admitted: RPM, then 1 over
        # (the oversized request never reaches the store).
        assert calls == ([RPM, 1] if store == "redis" else [0, 0])


async def test_admin_buckets_needs_the_admin_key() -> None:
    async with (
        rig_emulators(slots=2) as urls,
        router(router_raw(urls, slots=2, ttft_slo_s=1.0, extra=TENANTS)) as r,
        client_session() as session,
    ):
        for headers, status, code in (({}, 401, "invalid_api_key"),
                                      (KEY, 403, "permission_denied"),
                                      ({"Authorization": "Bearer sk-nope"}, 401,
                                       "invalid_api_key")):
            async with session.get(r.url + "/admin/buckets", headers=headers) as resp:
                assert resp.status == status
                assert (await resp.json())["error"]["code"] == code
        async with session.get(r.url + "/admin/buckets",
                               headers={"Authorization": "Bearer sk-admin"}) as resp:
            assert resp.status == 200
            snap = await resp.json()
        assert snap["mode"] == "timeline"
        [replica] = snap["buckets"]["small"]["replicas"]
        assert replica["url"] == urls[0] and replica["slots"] == 2
        assert replica["report"] is not None, "the /load poll has reported"
