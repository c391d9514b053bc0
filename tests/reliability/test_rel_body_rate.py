"""Large bodies draw on ``server.large_body_bytes_per_s`` (a router process, a real emulator):
within the rate's wait they are read once it allows, past it they get 503 + Retry-After unread,
small requests are served meanwhile, and a large body sent again at its Retry-After is taken."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from live_processes import StartEmulatorProcess, StartRouterProcess
from stack import MODEL, assert_invariant, chat, error_code

pytestmark = pytest.mark.timeout(60)

MB = 1 << 20


def _large(n: int) -> bytes:
    """A chat body of ``n`` bytes whose prompt is far past the 2k shape (answered 400)."""
    head = json.dumps({"model": MODEL, "max_tokens": 4,
                       "messages": [{"role": "user", "content": ""}]}).encode()
    cut = head.index(b'""') + 1
    return head[:cut] + b"a " * ((n - len(head)) // 2) + head[cut:]


async def test_large_bodies_past_the_rate_wait_their_retry_after(
        tmp_path: Path, emulator_process: StartEmulatorProcess,
        router_process: StartRouterProcess) -> None:
    urls = await emulator_process()
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
    port = (await router_process(cfg)).port
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = _large(MB)
        hdrs = {"Content-Type": "application/json"}

        async def large() -> tuple[int, bytes, dict[str, str]]:
            async with s.post(url, data=body, headers=hdrs) as r:
                return r.status, await r.read(), dict(r.headers)

        # The bucket holds 2 MB and refills 1 MiB/s: two are read at once, the third
        # waits ~0.95 s (under MAX_WAIT_S) and is read then, two more would wait longer.
        sent = [asyncio.create_task(large()) for _ in range(5)]
        async with s.post(url, json=chat(4)) as r:  # small bodies never wait
            assert r.status == 200
        answers = await asyncio.gather(*sent)
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [400, 400, 400, 503, 503], statuses
        for status, raw, headers in answers:
            if status == 400:  # read and parsed: too long for the 2k shape
                assert error_code(raw) == "context_length_exceeded"
            else:
                assert error_code(raw) == "large_body_rate_exceeded"
                assert int(headers["Retry-After"]) >= 1
        retry_ms = max(int(h["retry-after-ms"]) for st, _, h in answers if st == 503)
        await asyncio.sleep(retry_ms / 1e3)
        status, raw, _ = await large()  # sent again at its Retry-After: taken
        assert status == 400 and error_code(raw) == "context_length_exceeded"
        async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        assert_invariant(text)
        assert 'reason="body_rate"} 2.0' in text
