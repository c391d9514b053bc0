"""The per-token lateness histogram seen through real sockets: it counts every token a
streaming client received, each request's first token under token="first"."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact

BASE = builtin_artifact("llama-3.1-8b-2k")
NAME = "lpu_emulator_token_lateness_seconds"


async def _stream_tokens(session: aiohttp.ClientSession, url: str, n: int) -> int:
    body = {"model": BASE.model, "messages": [{"role": "user", "content": "go"}],
            "max_tokens": n, "stream": True}
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        text = await resp.read()
    return text.count(b'"delta":{"content":')


def _sample(text: str, suffix: str, token: str) -> float:
    prefix = f'{NAME}_{suffix}{{model_name="{BASE.model}",token="{token}"}} '
    (line,) = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return float(line.removeprefix(prefix))


async def test_histogram_counts_every_token_the_client_received() -> None:
    art = replace(BASE, slots=8, prefill_s=0.01, per_token_s=0.001)
    async with (
        start_emulators(EmulatorOptions(art, tick_s=0.004)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        received = await asyncio.gather(*(_stream_tokens(session, url, 30 + i)
                                          for i in range(6)))
        async with session.get(url + "/metrics") as resp:
            text = await resp.text()
    assert received == [30 + i for i in range(6)]
    assert _sample(text, "count", "first") == 6
    assert _sample(text, "count", "later") == sum(received) - 6
    inf = f'{NAME}_bucket{{le="+Inf",model_name="{BASE.model}",token="later"}} '
    assert f"{inf}{float(sum(received) - 6)}" in text
    # Written at or after its due time: no token is early.
    assert _sample(text, "sum", "first") >= 0 and _sample(text, "sum", "later") >= 0
