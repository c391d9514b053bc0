"""Large bodies draw on ``server.large_body_bytes_per_s`` (a router process, real emulators):
past it they get 503 + Retry-After unread, small requests are served meanwhile, and a large body
sent again at its Retry-After is taken."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from live_processes import emulator_process, router_process
from reliability_harness import MODEL, assert_invariant, chat, error_code

pytestmark = pytest.mark.timeout(60)

MB = 1 << 20


def _large(n: int) -> bytes:
    """A chat body of ``n`` bytes whose prompt is far past the 2k shape (answered 400)."""
    head = json.dumps({"model": MODEL, "max_tokens": 4,
                       "messages": [{"role": "user", "content": ""}]}).encode()
    cut = head.index(b'""') + 1
    return head[:cut] + b"a " * ((n - len(head)) // 2) + head[cut:]


async def test_large_bodies_past_the_rate_wait_their_retry_after(tmp_path: Path) -> None:
    async with emulator_process() as urls:
        cfg = tmp_path / "router.toml"
        cfg.write_text(f"""
[server]
port = 0
max_body_bytes = {2 * MB}
large_body_bytes_per_s = {MB}
[admission]
mode = "off"
[[buckets]]
name = "short"
model = "{MODEL}"
artifact = "llama-3.1-8b-2k"
time_scale = 0.05
backends = ["{urls[0]}"]
""")
        async with router_process(cfg) as (_, port), aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            body = _large(MB)
            hdrs = {"Content-Type": "application/json"}
            statuses = []
            retry_ms = 0
            for _ in range(3):  # the bucket holds 2 MB: two pass, the third waits
                async with s.post(url, data=body, headers=hdrs) as r:
                    statuses.append(r.status)
                    if r.status == 503:
                        assert error_code(await r.read()) == "large_body_rate_exceeded"
                        retry_ms = int(r.headers["retry-after-ms"])
                        assert int(r.headers["Retry-After"]) >= 1
            assert statuses == [400, 400, 503]
            assert 0 < retry_ms <= 1000
            async with s.post(url, json=chat(4)) as r:  # small bodies never wait
                assert r.status == 200
            await asyncio.sleep(retry_ms / 1e3)
            async with s.post(url, data=body, headers=hdrs) as r:
                assert r.status == 400  # taken, parsed, refused for its length
                assert error_code(await r.read()) == "context_length_exceeded"
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            assert_invariant(text)
            assert 'reason="body_rate"} 1.0' in text
