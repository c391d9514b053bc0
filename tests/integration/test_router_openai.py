"""End to end with the official openai client through the real router to real emulators."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from aiohttp import web
from openai import AsyncOpenAI
from stack import MODEL, Stack, StartFake, StartRouter, router_config, two_bucket_stack

MSG = [{"role": "user", "content": "Say something."}]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with two_bucket_stack() as s:
        yield s


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


async def test_chat_non_streaming(client: AsyncOpenAI, stack: Stack) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MSG, max_tokens=12)  # type: ignore[arg-type]
    r = raw.parse()
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens == 12
    assert raw.headers["x-lpu-bucket"] == "short"
    assert raw.headers["x-request-id"]
    assert stack.metric("lpu_router_requests_finished_total",
                        {"bucket": "short", "outcome": "completed"}) == 1


async def test_chat_streaming(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=9, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text
    assert usage is not None and usage.completion_tokens == 9


async def test_completions_both_ways(client: AsyncOpenAI) -> None:
    r = await client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert r.choices[0].text and r.usage is not None and r.usage.completion_tokens == 5
    stream = await client.completions.create(model=MODEL, prompt="Hi", max_tokens=4,
                                             stream=True)
    pieces = [c.choices[0].text async for c in stream if c.choices]
    assert "".join(pieces)


async def test_models_lists_the_router_models(client: AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]


async def test_long_prompt_goes_to_the_bigger_bucket(client: AsyncOpenAI) -> None:
    long = [{"role": "user", "content": "word " * 3000}]
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=long, max_tokens=8)  # type: ignore[arg-type]
    assert raw.headers["x-lpu-bucket"] == "medium"
    # Same prompt, no max_tokens: the allowance is the medium bucket's default (its cap).
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MSG)  # type: ignore[arg-type]
    assert (raw.headers["x-lpu-bucket"], raw.headers["x-lpu-max-tokens"]) == ("short", "1024")


async def test_over_cap_is_clamped_and_says_so(client: AsyncOpenAI, stack: Stack) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MSG, max_completion_tokens=5000)  # type: ignore[arg-type]
    assert raw.headers["x-lpu-max-tokens-clamped-from"] == "5000"
    assert raw.headers["x-lpu-bucket"] == "short"
    r = raw.parse()
    assert r.usage is not None and r.usage.completion_tokens == 1024
    assert stack.metric("lpu_router_max_tokens_clamped_total",
                        {"bucket": "short", "reason": "bucket_cap"}) == 1


async def test_context_length_refused_without_a_backend(client: AsyncOpenAI,
                                                        stack: Stack) -> None:
    huge = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=MODEL, messages=huge,  # type: ignore[arg-type]
                                             max_tokens=10)
    assert info.value.code == "context_length_exceeded"
    assert stack.metric("lpu_router_requests_rejected_total",
                        {"bucket": "none", "priority": "standard",
                         "reason": "context_length"}) == 1
    assert stack.metric("lpu_router_requests_admitted_total",
                        {"bucket": "medium", "priority": "standard"}) == 0


async def test_unknown_model(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="gpt-4o", messages=MSG)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"model": "llama-3.1-8b-instant"}',
     b'{"model": "llama-3.1-8b-instant", "messages": [], "max_tokens": 1}',
     b'{"model": "llama-3.1-8b-instant", "messages": [{"role": "user", "content": "x"}],'
     b' "max_tokens": "ten"}'],
    ids=["truncated", "not-an-object", "no-messages", "empty-messages", "bad-type"],
)
async def test_malformed_bodies(stack: Stack, body: bytes) -> None:
    async with aiohttp.ClientSession() as s, s.post(
            stack.url + "/v1/chat/completions", data=body,
            headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert r.headers["x-request-id"]
        err = (await r.json())["error"]
        assert err["type"] == "invalid_request_error"


async def test_malformed_with_the_openai_client(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=[])


async def test_api_keys_when_configured() -> None:
    tenants = {"tenants": [{"name": "acme", "api_keys": ["sk-good"]}]}
    async with two_bucket_stack(extra=tenants) as stack:
        async with AsyncOpenAI(base_url=stack.url + "/v1", api_key="sk-bad",
                               max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as info:
                await bad.chat.completions.create(model=MODEL, messages=MSG,  # type: ignore[arg-type]
                                                  max_tokens=1)
            assert info.value.code == "invalid_api_key"
        async with AsyncOpenAI(base_url=stack.url + "/v1", api_key="sk-good",
                               max_retries=0) as good:
            r = await good.chat.completions.create(model=MODEL, messages=MSG,  # type: ignore[arg-type]
                                                   max_tokens=1)
            assert r.choices
        async with aiohttp.ClientSession() as s, s.get(stack.url + "/admin/backends") as resp:
            assert resp.status == 401



@pytest.mark.parametrize("usage", [{"prompt_tokens": 777, "completion_tokens": 1}, None],
                         ids=["reported", "not-reported"])
async def test_prompt_tokens_come_from_the_backends_usage(
        fake_backend: StartFake, router_stack: StartRouter, usage: dict[str, int] | None) -> None:
    """A short prompt is placed by its byte bound, uncounted: the prompt-token counter holds
    what the backend reported (777, no count gives that), and the router's own count only when
    the backend reported nothing."""
    async def completion(request: web.Request) -> web.Response:
        body: dict[str, object] = {
            "id": "x", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}]}
        if usage is not None:
            body["usage"] = usage
        return web.json_response(body)

    fake = await fake_backend(completion)
    stack = await router_stack(router_config([fake.url]))
    async with AsyncOpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0) as c:
        await c.chat.completions.create(model=MODEL, messages=MSG,  # type: ignore[arg-type]
                                        max_tokens=3)
    counted = stack.metric("lpu_router_prompt_tokens_total", {"bucket": "short"})
    if usage is not None:
        assert counted == 777
    else:  # the router counts at the end: the template's tokens and the message's
        assert 9 < counted < 50
