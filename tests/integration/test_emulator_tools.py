"""Tool calls from the emulator, driven by the official openai client on loopback: a
``tool_choice`` that requires a call gets one (streamed as OpenAI streams it), ``auto`` gets
text, and what the emulator cannot honour is refused with a 400 naming ``tool_choice``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact

ART = replace(builtin_artifact("llama-3.1-8b-2k"), slots=4, prefill_s=0.02, per_token_s=0.001)
MODEL = ART.model
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Oslo?"}]
WEATHER: ChatCompletionToolParam = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "required": ["city", "unit", "days"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "detail": {"type": "boolean"}}}}}
TIME: ChatCompletionToolParam = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, TIME]


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    async with start_emulators(EmulatorOptions(ART, tick_s=0.002)) as urls:
        yield urls[0]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10)


def _check_weather_arguments(text: str) -> None:
    args = json.loads(text)
    assert set(args) == {"city", "unit", "days"}
    assert isinstance(args["city"], str) and args["city"]
    assert args["unit"] in ("celsius", "fahrenheit") and 1 <= args["days"] <= 7


async def test_named_function_non_streaming(base_url: str) -> None:
    def call() -> openai.types.chat.ChatCompletion:
        with _client(base_url) as client:
            return client.chat.completions.create(
                model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=100,
                tool_choice={"type": "function", "function": {"name": "get_weather"}})

    resp = await asyncio.to_thread(call)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    tool = calls[0]
    assert tool.type == "function" and tool.id.startswith("call_")
    assert tool.function.name == "get_weather"
    _check_weather_arguments(tool.function.arguments)
    # One emulated token per piece of the arguments, on the exact schedule.
    assert resp.usage is not None
    n = resp.usage.completion_tokens
    assert n == -(-len(tool.function.arguments) // 4)
    groq = (resp.model_extra or {})["x_groq"]["usage"]
    assert groq["total_time"] == pytest.approx(ART.service_time(n))


async def test_required_streams_like_openai(base_url: str) -> None:
    def call() -> list[openai.types.chat.ChatCompletionChunk]:
        with _client(base_url) as client:
            return list(client.chat.completions.create(
                model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                max_tokens=100, stream=True, seed=3, stream_options={"include_usage": True}))

    chunks = await asyncio.to_thread(call)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    first = deltas[0]
    assert first.role == "assistant" and first.content is None
    assert first.tool_calls is not None
    head = first.tool_calls[0]
    assert head.index == 0 and head.id is not None and head.id.startswith("call_")
    assert head.type == "function" and head.function is not None
    assert head.function.name in ("get_weather", "get_time") and head.function.arguments == ""
    pieces = []
    for d in deltas[1:]:
        if d.tool_calls:
            (part,) = d.tool_calls
            assert part.index == 0 and part.id is None and part.function is not None
            pieces.append(part.function.arguments or "")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    text = "".join(pieces)
    if head.function.name == "get_weather":
        _check_weather_arguments(text)
    else:
        assert json.loads(text) == {}
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == len(pieces)

    def again() -> openai.types.chat.ChatCompletion:
        with _client(base_url) as client:
            return client.chat.completions.create(
                model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                max_tokens=100, seed=3)

    # Deterministic: the same prompt and seed give the same call, streamed or not.
    same = (await asyncio.to_thread(again)).choices[0].message.tool_calls
    assert same is not None and same[0].id == head.id
    assert same[0].function.name == head.function.name and same[0].function.arguments == text


async def test_auto_answers_text(base_url: str) -> None:
    def call() -> openai.types.chat.ChatCompletion:
        with _client(base_url) as client:
            return client.chat.completions.create(
                model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="auto", max_tokens=8)

    choice = (await asyncio.to_thread(call)).choices[0]
    assert choice.finish_reason == "length" and choice.message.content
    assert not choice.message.tool_calls


async def test_allowance_cuts_the_arguments(base_url: str) -> None:
    def call() -> openai.types.chat.ChatCompletion:
        with _client(base_url) as client:
            return client.chat.completions.create(
                model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=3,
                tool_choice={"type": "function", "function": {"name": "get_weather"}})

    resp = await asyncio.to_thread(call)
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls is not None
    assert len(choice.message.tool_calls[0].function.arguments) == 12
    assert resp.usage is not None and resp.usage.completion_tokens == 3


@pytest.mark.parametrize(("tools", "choice", "words"), [
    (TOOLS, {"type": "function", "function": {"name": "launch"}}, "'launch' is not in 'tools'"),
    (None, "required", "needs at least one function"),
    ([{"type": "custom", "custom": {"name": "grep"}}], "required",
     "needs at least one function"),
    (TOOLS, {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
     "cannot honour a 'tool_choice' of type 'allowed_tools'"),
    (TOOLS, "sometimes", "expected 'none', 'auto', 'required'"),
    (TOOLS, {"type": "function", "function": {}}, "needs 'function.name'"),
], ids=["unknown-function", "required-without-tools", "required-custom-only",
        "allowed-tools", "bad-string", "no-name"])
async def test_refuses_what_it_cannot_do(base_url: str, tools: Any, choice: Any,
                                         words: str) -> None:
    def call() -> None:
        with _client(base_url) as client:
            extra: dict[str, Any] = {"tools": tools} if tools is not None else {}
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,
                                           extra_body={"tool_choice": choice, **extra})

    with pytest.raises(openai.BadRequestError) as exc:
        await asyncio.to_thread(call)
    assert exc.value.status_code == 400
    body = exc.value.body
    assert isinstance(body, dict) and body["param"] == "tool_choice"
    assert words in body["message"] and body["type"] == "invalid_request_error"
