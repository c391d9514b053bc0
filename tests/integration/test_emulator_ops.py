"""Operations: fault injection at runtime and artifact swap."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import replace
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact

ART = replace(builtin_artifact("llama-3.1-8b-2k"), slots=2, prefill_s=0.02, per_token_s=0.005,
              compile_time_s=0.3)
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CHAT = {"model": ART.model, "messages": MESSAGES, "max_tokens": 6}


async def _set_faults(session: aiohttp.ClientSession, url: str, **faults: float) -> None:
    async with session.post(url + "/admin/faults", json=faults) as resp:
        assert resp.status == 200, await resp.text()


async def _stream_events(
    session: aiohttp.ClientSession, url: str
) -> tuple[list[bytes], BaseException | None]:
    """SSE events of one streaming request until the end or the error that ended it."""
    buf = b""
    try:
        async with session.post(url + "/v1/chat/completions", json=CHAT | {"stream": True}) as r:
            assert r.status == 200
            async for data in r.content.iter_any():
                buf += data
    except aiohttp.ClientError as exc:
        return [e for e in buf.split(b"\n\n") if e], exc
    return [e for e in buf.split(b"\n\n") if e], None


async def test_faults_are_off_by_default_and_changed_at_runtime() -> None:
    async with (
        start_emulators(EmulatorOptions(ART)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        async with session.get(url + "/admin/faults") as resp:
            doc = await resp.json()
        assert doc["error_rate"] == 0 and doc["crash_rate"] == 0
        await _set_faults(session, url, error_rate=1.0)
        async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 500
            assert (await resp.json())["error"]["type"] == "server_error"
        async with session.post(url + "/admin/faults", json={"error_rate": 3}) as resp:
            assert resp.status == 400
            assert "faults.error_rate" in (await resp.json())["error"]["message"]
        await _set_faults(session, url, error_rate=0.0)
        async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
        async with session.get(url + "/metrics") as resp:
            assert 'lpu:faults_injected_total{kind="error"} 1.0' in await resp.text()


async def test_injected_error_raises_in_the_openai_client() -> None:
    async with (
        start_emulators(EmulatorOptions(ART)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        await _set_faults(session, url, error_rate=1.0)
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        async with client:
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(
                    model=ART.model, messages=MESSAGES, max_tokens=6, stream=True
                )


async def test_error_after_the_first_byte_is_one_error_frame() -> None:
    async with (
        start_emulators(EmulatorOptions(ART)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        await _set_faults(session, url, stream_error_rate=1.0, crash_after_tokens=2)
        events, exc = await _stream_events(session, url)
        assert exc is None
        assert events[-1].startswith(b'data: {"error":')
        assert json.loads(events[-1].removeprefix(b"data: "))["error"]["code"] == "internal_error"
        assert len(events) == 1 + 2 + 1  # role chunk, two tokens, the error
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        async with client:
            stream = await client.chat.completions.create(
                model=ART.model, messages=MESSAGES, max_tokens=6, stream=True
            )
            with pytest.raises(openai.APIError):
                async for _ in stream:
                    pass


async def test_crash_drops_the_connection_mid_stream_and_frees_the_slot() -> None:
    async with (
        start_emulators(EmulatorOptions(ART)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        await _set_faults(session, url, crash_rate=1.0, crash_after_tokens=3)
        events, exc = await _stream_events(session, url)
        assert isinstance(exc, aiohttp.ClientPayloadError)
        assert not any(e == b"data: [DONE]" for e in events)
        with pytest.raises(aiohttp.ServerDisconnectedError):  # non-streaming: no byte sent
            async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
                await resp.read()
        async with session.get(url + "/load") as resp:
            load = await resp.json()
        assert load["running"] == 0
        async with session.get(url + "/metrics") as resp:
            assert 'lpu:faults_injected_total{kind="crash"} 2.0' in await resp.text()


async def test_garbage_is_a_broken_frame_in_a_200() -> None:
    async with (
        start_emulators(EmulatorOptions(ART)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        await _set_faults(session, url, garbage_rate=1.0, crash_after_tokens=1)
        events, exc = await _stream_events(session, url)
        assert exc is None
        with pytest.raises(ValueError):
            json.loads(events[-1].removeprefix(b"data: "))
        async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            with pytest.raises(ValueError):
                json.loads(await resp.read())


async def test_stall_pauses_the_stream() -> None:
    async with (
        start_emulators(EmulatorOptions(ART, tick_s=0.0)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        await _set_faults(session, url, stall_rate=1.0, stall_s=0.3, stall_after_tokens=2)
        times: list[float] = []
        async with session.post(url + "/v1/chat/completions",
                                json=CHAT | {"stream": True}) as resp:
            async for _ in resp.content.iter_any():
                times.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) >= 0.25


async def _json(session: aiohttp.ClientSession, method: str, url: str,
                body: Any = None) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as resp:
        return resp.status, await resp.json()


async def test_artifact_swap_refuses_new_work_while_compiling_and_finishes_old_work() -> None:
    new_toml = (
        '[artifact]\nname = "llama-3.1-8b-4k"\nmodel = "llama-3.1-8b-instant"\n'
        'version = "2026.12.0"\ncompiler_version = "lpuc 0.32.0"\nprecision = "fp8"\n'
        'target = "lpu-v1 x8"\nmax_seq_len = 4096\nmax_output_tokens = 1024\nslots = 3\n'
        "prefill_ms = 30.0\nper_token_ms = 2.0\ncompile_time_s = 0.3\n"
    )
    async with (
        start_emulators(EmulatorOptions(ART)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        # In flight on the old schedule: 20 ms + 59 * 5 ms = 315 ms.
        old = asyncio.create_task(
            session.post(url + "/v1/chat/completions", json=CHAT | {"max_tokens": 60})
        )
        await asyncio.sleep(0.05)
        status, doc = await _json(session, "POST", url + "/admin/artifact", {"toml": new_toml})
        assert (status, doc["artifact"], doc["compile_s"]) == (202, "llama-3.1-8b-4k", 0.3)
        status, doc = await _json(session, "POST", url + "/admin/artifact",
                                  {"artifact": "llama-3.3-70b-2k"})
        assert (status, doc["error"]["code"]) == (409, "swap_in_progress")
        status, doc = await _json(session, "GET", url + "/readyz")
        assert (status, doc["ready"], doc["pending_artifact"]) == (503, False,
                                                                   "llama-3.1-8b-4k")
        async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "compiling"
            assert int(resp.headers["Retry-After"]) >= 1
        _, load = await _json(session, "GET", url + "/load")
        assert (load["artifact"], load["ready"]) == (ART.name, False)
        resp = await old
        assert resp.status == 200
        assert resp.headers["x-lpu-artifact"] == ART.name
        assert (await resp.json())["usage"]["completion_tokens"] == 60

        async def ready() -> bool:
            return (await _json(session, "GET", url + "/readyz"))[0] == 200

        deadline = time.monotonic() + 5
        while not await ready():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        _, load = await _json(session, "GET", url + "/load")
        assert (load["artifact"], load["version"], load["slots"]) == (
            "llama-3.1-8b-4k", "2026.12.0", 3)
        _, models = await _json(session, "GET", url + "/v1/models")
        assert {m["id"] for m in models["data"]} == {"llama-3.1-8b-instant", "llama-3.1-8b-4k"}
        async with session.post(url + "/v1/chat/completions",
                                json=CHAT | {"model": "llama-3.1-8b-4k"}) as resp:
            assert resp.status == 200
            assert resp.headers["x-lpu-artifact-version"] == "2026.12.0"


async def test_artifact_swap_by_builtin_name_and_bad_requests() -> None:
    async with (
        start_emulators(EmulatorOptions(ART, time_scale=0.001)) as (url,),
        aiohttp.ClientSession() as session,
    ):
        for body in ({"artifact": "no-such-artifact"}, {"toml": "[artifact]\nname = 1\n"},
                     {"nothing": True}):
            status, doc = await _json(session, "POST", url + "/admin/artifact", body)
            assert status == 400, body
            assert set(doc["error"]) == {"message", "type", "param", "code"}
        status, doc = await _json(session, "POST", url + "/admin/artifact",
                                  {"artifact": "llama-3.3-70b-2k"})
        assert status == 202
        assert doc["compile_s"] == pytest.approx(0.24)
        deadline = time.monotonic() + 5
        while (await _json(session, "GET", url + "/readyz"))[0] != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        _, info = await _json(session, "GET", url + "/admin/artifact")
        assert info["artifact"]["name"] == "llama-3.3-70b-2k"
        assert info["pending"] is None
