"""The emulator driven by the official openai client: sync and async, streaming and not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact

ART = replace(builtin_artifact("llama-3.1-8b-2k"), slots=4, prefill_s=0.02, per_token_s=0.001)
MODEL = ART.model
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me about deterministic hardware."}
]


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    async with start_emulators(EmulatorOptions(ART, tick_s=0.002)) as urls:
        yield urls[0]


def _sync_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10)


def _async_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10)


async def test_sync_client_non_streaming(base_url: str) -> None:
    def call() -> openai.types.chat.ChatCompletion:
        with _sync_client(base_url) as client:
            return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)

    resp = await asyncio.to_thread(call)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == MODEL
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert resp.usage is not None and resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12
    groq = (resp.model_extra or {})["x_groq"]["usage"]
    assert groq["prompt_time"] == pytest.approx(ART.prefill_s)
    assert groq["completion_time"] == pytest.approx(11 * ART.per_token_s)
    assert groq["total_time"] == pytest.approx(ART.service_time(12))
    assert groq["queue_time"] == 0.0


async def test_sync_client_streaming_with_usage(base_url: str) -> None:
    def call() -> list[openai.types.chat.ChatCompletionChunk]:
        with _sync_client(base_url) as client:
            stream = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=8, stream=True,
                stream_options={"include_usage": True},
            )
            return list(stream)

    chunks = await asyncio.to_thread(call)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert len(content) == 8 and all(content)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])


async def test_async_client_non_streaming_completions_and_models(base_url: str) -> None:
    async with _async_client(base_url) as client:
        resp = await client.completions.create(model=ART.name, prompt="Once upon", max_tokens=5)
        assert resp.object == "text_completion"
        assert resp.id.startswith("cmpl-")
        assert resp.choices[0].text and resp.choices[0].finish_reason == "length"
        assert resp.usage is not None and resp.usage.completion_tokens == 5
        models = await client.models.list()
        ids = {m.id for m in models.data}
        assert ids == {ART.model, ART.name}
        assert all((m.model_extra or {})["artifact"] == ART.name for m in models.data)
        one = await client.models.retrieve(ART.name)
        assert (one.model_extra or {})["version"] == ART.version


async def test_async_client_streaming_text_matches_non_streaming(base_url: str) -> None:
    async with _async_client(base_url) as client:
        whole = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=20, seed=3
        )
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=20, seed=3, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        other = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=20, seed=4
        )
    assert "".join(parts) == whole.choices[0].message.content
    assert other.choices[0].message.content != whole.choices[0].message.content


async def test_async_streaming_completions_endpoint(base_url: str) -> None:
    async with _async_client(base_url) as client:
        stream = await client.completions.create(
            model=MODEL, prompt="abc", max_tokens=4, stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) == 4
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 4


async def test_raw_response_headers(base_url: str) -> None:
    async with _async_client(base_url) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=2, extra_headers={"x-request-id": "abc-1"}
        )
    assert raw.headers["x-request-id"] == "abc-1"
    assert float(raw.headers["x-lpu-predicted-ttft-ms"]) == pytest.approx(ART.prefill_s * 1e3)
    assert raw.headers["x-lpu-artifact"] == ART.name
    assert raw.headers["x-lpu-artifact-version"] == ART.version


async def test_error_statuses_raise_the_clients_typed_errors(base_url: str) -> None:
    async with _async_client(base_url) as client:
        with pytest.raises(openai.NotFoundError) as nf:
            await client.chat.completions.create(model="nope", messages=MESSAGES)
        assert nf.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as br:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
        assert br.value.code == "unsupported_parameter"
        with pytest.raises(openai.BadRequestError) as cl:
            await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=ART.max_output_tokens,
                stream=True,
                extra_body={"messages": [{"role": "user", "content": "word " * 1500}]},
            )
        assert cl.value.code == "context_length_exceeded"
