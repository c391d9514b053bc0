"""The schedule seen through real sockets: FIFO timing, cancellation, /load, /metrics, lengths,
and the recorded schedule (``GET /admin/schedule``) itself.

Timing is asserted on the emulator's recorded schedule (its own computed times), never on when
bytes arrived; the engine's exact schedule on a virtual clock is in tests/unit/lpu_emulator.
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
from recorded_schedule import Scheduled, fifo_problems, late_problems, recorded, recorded_at

from lpu_emulator.lengths import OutputLength
from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import Artifact, builtin_artifact

BASE = builtin_artifact("llama-3.1-8b-2k")


def art(slots: int, prefill_s: float, per_token_s: float) -> Artifact:
    return replace(BASE, slots=slots, prefill_s=prefill_s, per_token_s=per_token_s)


def chat(max_tokens: int, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": BASE.model, "messages": [{"role": "user", "content": "go"}],
            "max_tokens": max_tokens, "stream": stream, **extra}


async def _first_chunk(session: aiohttp.ClientSession, url: str, rid: str) -> bytes:
    """The first body bytes of a 5-token stream (the role chunk and the first token travel in
    one write)."""
    async with session.post(url + "/v1/chat/completions", json=chat(5),
                            headers={"x-request-id": rid}) as resp:
        assert resp.status == 200
        first = await resp.content.readany()
        await resp.read()
        return first


async def test_five_simultaneous_requests_on_one_slot_start_back_to_back() -> None:
    a = art(1, prefill_s=0.2, per_token_s=0.05)
    service = a.service_time(5)  # 0.4 s
    async with (
        start_emulators(EmulatorOptions(a, tick_s=0.0)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        firsts = await asyncio.gather(*(_first_chunk(session, url, f"r{i}") for i in range(5)))
        (schedule,) = (await recorded([url])).values()
    assert all(b'"role":"assistant"' in first for first in firsts)
    # The first starts on arrival; each next one the moment the one before frees the slot;
    # every first token one prefill after its start, every slot held exactly one service time.
    assert sorted(e.request_id for e in schedule) == [f"r{i}" for i in range(5)]
    assert schedule[0].start == schedule[0].arrival
    for before, after in itertools.pairwise(schedule):
        assert after.start == before.end
    for e in schedule:
        assert e.state == "done" and e.output_tokens == 5
        assert e.first_token - e.start == pytest.approx(a.prefill_s, abs=1e-9)
        assert e.end - e.start == pytest.approx(service, abs=1e-9)
    assert not fifo_problems(schedule)


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
            before, _ = await recorded_at(url)
            load = await _load(session, url)
            after, (first, second, last) = await recorded_at(url)
            async with session.get(url + "/metrics") as resp:
                text = await resp.text()
            assert "lpu:requests_cancelled_total 2.0" in text
            third.close()
    # The queued one left without ever holding the slot; the running one freed it when it
    # left, and the third took it that moment for a whole service time.
    assert (first.state, second.state, last.state) == ("cancelled", "cancelled", "running")
    assert not second.held_slot and first.end < first.last_token
    assert last.start == first.end
    assert last.end - last.start == pytest.approx(a.service_time(100), abs=1e-9)
    # /load, read between two clock readings, says when that slot frees.
    assert last.end - after - 1e-6 <= load["slot_free_in_s"][0] <= last.end - before + 1e-6


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
            "compiler_version": a.compiler_version, "precision": a.precision,
            "target": a.target, "digest": a.digest,  # of the artifact before the time scale
            "slot_free_in_s": [0.0, 0.0],
        }
        tasks = [asyncio.create_task(session.post(url + "/v1/chat/completions",
                                                  json=chat(10, stream=False)))
                 for _ in range(3)]
        async def three_in() -> bool:
            doc = await _load(session, url)
            return bool(doc["running"] + doc["waiting"] == 3)
        await _wait_for(three_in)
        before, _ = await recorded_at(url)
        doc = await _load(session, url)
        after, placed = await recorded_at(url)
        assert (doc["running"], doc["waiting"]) == (2, 1)
        free = doc["slot_free_in_s"]
        assert free == sorted(free)
        # Two ran on arrival; the third takes the first slot to free, for a whole service
        # time; /load, read between two clock readings, says when each slot frees.
        service = 2.0 * a.service_time(10)
        one, two, three = placed
        assert (one.start, two.start) == (one.arrival, two.arrival)
        assert three.start == one.end
        assert all(e.end - e.start == pytest.approx(service, abs=1e-9) for e in placed)
        for f, end in zip(free, sorted([two.end, three.end]), strict=True):
            assert end - after - 1e-6 <= f <= end - before + 1e-6
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


async def test_the_recorded_schedule_document() -> None:
    """``GET /admin/schedule``: every placed request with its computed times, by request id
    (``?request_id=``), in placement order; refused requests are not on it."""
    a = art(1, prefill_s=0.02, per_token_s=0.001)
    async with (
        start_emulators(EmulatorOptions(a, tick_s=0.0)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        for rid, deadline in (("a", "500"), ("b", None)):
            headers = {"x-request-id": rid} | ({"x-lpu-deadline-ms": deadline} if deadline else {})
            async with session.post(url + "/v1/chat/completions", json=chat(3, stream=False),
                                    headers=headers) as resp:
                assert resp.status == 200
        refused = {"x-request-id": "c", "x-lpu-deadline-ms": "1"}  # below the prefill: 429
        async with session.post(url + "/v1/chat/completions", json=chat(3), headers=refused
                                ) as resp:
            assert resp.status == 429
        async with session.get(url + "/admin/schedule", params={"request_id": "b"}) as resp:
            only_b = await resp.json()
        now, (ea, eb) = await recorded_at(url)
    assert eb.start >= ea.end  # b was sent after a had ended
    assert (ea.request_id, ea.deadline_s, eb.request_id, eb.deadline_s) == ("a", 0.5, "b", None)
    assert [Scheduled(backend=url, **e) for e in only_b["requests"]] == [eb]
    for e in (ea, eb):
        assert e.state == "done" and e.slots == 1 and e.output_tokens == 3 and e.end <= now
        assert e.first_token == pytest.approx(e.start + a.prefill_s, abs=1e-9)
        assert e.last_token == pytest.approx(e.start + a.service_time(3), abs=1e-9)
    assert not fifo_problems([ea, eb]) and not late_problems([ea, eb], a.prefill_s)


def _entry(rid: str, arrival: float, start: float, service: float = 1.0,
           state: str = "done", slots: int = 1) -> Scheduled:
    return Scheduled("b", rid, arrival, start, start + 0.1, start + service, start + service,
                     3, state, slots, None)


@pytest.mark.parametrize(("entries", "problem"), [
    ([_entry("a", 0.0, 0.0), _entry("b", 0.5, 1.0)], None),
    ([_entry("a", 0.0, 0.0), _entry("b", 0.5, 0.5)], "hold the 1 slots"),
    ([_entry("a", 0.0, 1.0), _entry("b", 0.5, 0.5)], "not FIFO"),
    ([_entry("a", 0.0, 0.0), _entry("b", 0.5, 1.5)], "while a slot was free"),
    ([_entry("a", 1.0, 0.5)], "starts before it arrives"),
    ([_entry("a", 0.0, 0.0, slots=2), _entry("b", 0.5, 0.5, slots=2)], None),
], ids=["back-to-back", "two-on-one-slot", "overtaken", "idle-slot", "early", "two-slots"])
def test_the_schedule_checks_catch_what_they_claim(entries: list[Scheduled],
                                                   problem: str | None) -> None:
    found = fifo_problems(entries)
    if problem is None:
        assert not found
    else:
        assert any(problem in p for p in found), found
    late = late_problems(entries, 0.1)
    assert late == [f"{e.request_id} on b: first token {e.ttft_s * 1e3:.3f} ms after arrival,"
                    " bound 100.000 ms" for e in entries if e.ttft_s > 0.1 + 1e-9]
