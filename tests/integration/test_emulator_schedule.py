"""The schedule seen through real sockets: FIFO timing, cancellation, /load, /metrics, lengths.

Timing assertions use generous bounds (a busy 2-core machine can be late); the
exact schedule is asserted on a virtual clock in tests/unit/lpu_emulator.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from lpu_emulator.lengths import OutputLength
from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import Artifact, builtin_artifact

BASE = builtin_artifact("llama-3.1-8b-2k")


def art(slots: int, prefill_s: float, per_token_s: float) -> Artifact:
    return replace(BASE, slots=slots, prefill_s=prefill_s, per_token_s=per_token_s)


def chat(max_tokens: int, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": BASE.model, "messages": [{"role": "user", "content": "go"}],
            "max_tokens": max_tokens, "stream": stream, **extra}


async def _first_token_after(session: aiohttp.ClientSession, url: str, t0: float) -> float:
    """Seconds from ``t0`` to the first body bytes (the role chunk and the first token
    travel in one write)."""
    async with session.post(url + "/v1/chat/completions", json=chat(5)) as resp:
        assert resp.status == 200
        first = await resp.content.readany()
        elapsed = time.monotonic() - t0
        assert b'"role":"assistant"' in first
        await resp.read()
        return elapsed


async def test_five_simultaneous_requests_on_one_slot_start_back_to_back() -> None:
    a = art(1, prefill_s=0.2, per_token_s=0.05)
    service = a.service_time(5)  # 0.4 s
    async with (
        start_emulators(EmulatorOptions(a, tick_s=0.0)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        async with session.get(url + "/healthz") as warm:  # open one connection first
            assert warm.status == 200
        t0 = time.monotonic()
        ttfts = sorted(await asyncio.gather(
            *(_first_token_after(session, url, t0) for _ in range(5))
        ))
    for i, got in enumerate(ttfts):
        expected = i * service + a.prefill_s
        assert expected - 0.002 <= got <= expected + 0.25, (i, got, expected)
    gaps = [b - a_ for a_, b in itertools.pairwise(ttfts)]
    assert all(service - 0.15 <= g <= service + 0.15 for g in gaps), gaps


async def _raw_stream_request(port: int, body: dict[str, Any]) -> asyncio.StreamWriter:
    """Send a streaming request on a raw socket and return once the status line came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
    )
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    return writer


async def _load(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/load") as resp:
        doc: dict[str, Any] = await resp.json()
        return doc


async def _wait_for(check: Any, within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_client_disconnect_frees_the_slot_and_the_queue_moves_up() -> None:
    a = art(1, prefill_s=0.05, per_token_s=0.05)  # 100 tokens hold the slot ~5 s
    async with start_emulators(EmulatorOptions(a)) as (url,):
        port = int(url.rsplit(":", 1)[1])
        async with aiohttp.ClientSession() as session:
            running = await _raw_stream_request(port, chat(100))
            queued = await _raw_stream_request(port, chat(100))
            third = await _raw_stream_request(port, chat(100))
            load = await _load(session, url)
            assert (load["running"], load["waiting"]) == (1, 2)
            assert load["slot_free_in_s"][0] > 10.0

            queued.close()  # a queued request leaves the queue

            async def one_waiting() -> bool:
                return bool((await _load(session, url))["waiting"] == 1)

            await _wait_for(one_waiting)
            running.close()  # the running one frees its slot now; the third starts now

            async def third_started() -> bool:
                doc = await _load(session, url)
                return bool(doc["running"] == 1 and doc["waiting"] == 0)

            await _wait_for(third_started)
            load = await _load(session, url)
            assert a.service_time(100) - 1.0 < load["slot_free_in_s"][0] <= a.service_time(100)
            async with session.get(url + "/metrics") as resp:
                text = await resp.text()
            assert "lpu:requests_cancelled_total 2.0" in text
            third.close()


async def test_load_document() -> None:
    a = art(2, prefill_s=0.2, per_token_s=0.01)
    async with (
        start_emulators(EmulatorOptions(a, max_queue=5, time_scale=2.0)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        idle = await _load(session, url)
        assert idle == {
            "artifact": a.name, "version": a.version, "model": a.model, "ready": True,
            "pending_artifact": None, "ready_in_s": 0.0, "slots": 2, "running": 0,
            "waiting": 0, "queue_limit": 5, "time_scale": 2.0,
            "prefill_s": pytest.approx(0.4), "per_token_s": pytest.approx(0.02),
            "max_seq_len": a.max_seq_len, "max_output_tokens": a.max_output_tokens,
            "slot_free_in_s": [0.0, 0.0],
        }
        tasks = [asyncio.create_task(session.post(url + "/v1/chat/completions",
                                                  json=chat(10, stream=False)))
                 for _ in range(3)]
        async def three_in() -> bool:
            doc = await _load(session, url)
            return bool(doc["running"] + doc["waiting"] == 3)
        await _wait_for(three_in)
        doc = await _load(session, url)
        assert (doc["running"], doc["waiting"]) == (2, 1)
        service = 2.0 * a.service_time(10)
        free = doc["slot_free_in_s"]
        assert free == sorted(free)
        assert service - 0.2 < free[0] <= service
        assert 2 * service - 0.2 < free[1] <= 2 * service
        for resp in await asyncio.gather(*tasks):
            assert resp.status == 200
            resp.release()


async def test_metrics_use_vllm_names_and_fine_buckets() -> None:
    async with (
        start_emulators(EmulatorOptions(art(2, 0.01, 0.001))) as (url,),
        aiohttp.ClientSession() as session,
    ):
        async with session.post(url + "/v1/chat/completions", json=chat(4)) as resp:
            await resp.read()
        async with session.get(url + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    m = f'model_name="{BASE.model}"'
    for line in [
        f"vllm:num_requests_running{{{m}}} 0.0",
        f"vllm:num_requests_waiting{{{m}}} 0.0",
        f'vllm:time_to_first_token_seconds_bucket{{le="0.0001",{m}}}',
        f"vllm:e2e_request_latency_seconds_count{{{m}}} 1.0",
        f"vllm:request_queue_time_seconds_count{{{m}}} 1.0",
        f"vllm:time_per_output_token_seconds_count{{{m}}} 1.0",
        f"vllm:generation_tokens_total{{{m}}} 4.0",
        f"vllm:prompt_tokens_total{{{m}}}",
        f'vllm:request_success_total{{finished_reason="length",{m}}} 1.0',
        "lpu:slot_utilization 0.0",
        "lpu:slots 2.0",
        "lpu:ready 1.0",
        "lpu:requests_cancelled_total 0.0",
        f'lpu:token_delivery_lateness_seconds_count{{{m},token="first"}} 1.0',
        f'lpu:token_delivery_lateness_seconds_count{{{m},token="later"}}',
        f'lpu:artifact_info{{artifact="{BASE.name}",model_name="{BASE.model}",'
        f'version="{BASE.version}"}} 1.0',
    ]:
        assert line in text, line


async def _lengths(url: str, count: int, **extra: Any) -> list[int]:
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            body = chat(50, stream=False, **extra)
            async with session.post(url + "/v1/chat/completions", json=body) as resp:
                doc = await resp.json()
            out.append(doc["usage"]["completion_tokens"])
    return out


async def test_seeded_output_lengths_are_reproducible() -> None:
    options = EmulatorOptions(
        art(4, 0.001, 0.0001), output_length=OutputLength("geometric", mean=10), seed=11
    )
    async with start_emulators(options) as (url,):
        first = await _lengths(url, 8)
    async with start_emulators(options, replicas=2) as (url, other):
        again = await _lengths(url, 8)
        # A request with a seed gets the same length on any replica, every time.
        seeded = await _lengths(url, 2, seed=5) + await _lengths(other, 2, seed=5)
    assert first == again
    assert len(set(first)) > 1 and all(1 <= n <= 50 for n in first)
    assert len(set(seeded)) == 1


async def test_replicas_are_independent_backends_on_their_own_ports() -> None:
    async with start_emulators(EmulatorOptions(art(1, 0.5, 0.01)), replicas=3) as urls:
        assert len(set(urls)) == 3
        assert all(u.startswith("http://127.0.0.1:") and not u.endswith("/") for u in urls)
        async with aiohttp.ClientSession() as session:
            busy = asyncio.create_task(
                session.post(urls[0] + "/v1/chat/completions", json=chat(2, stream=False))
            )
            async def first_busy() -> bool:
                return bool((await _load(session, urls[0]))["running"] == 1)
            await _wait_for(first_busy)
            assert (await _load(session, urls[1]))["running"] == 0
            (await busy).release()
