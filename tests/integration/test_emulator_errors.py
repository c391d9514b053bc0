"""Refusals: OpenAI's error shape with the right status, before any byte of a response."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact

# 1 slot; a request of n tokens holds it 50 ms + (n - 1) * 10 ms.
ART = replace(
    builtin_artifact("llama-3.1-8b-2k"), slots=1, prefill_s=0.05, per_token_s=0.01,
    max_seq_len=256, max_output_tokens=64,
)
CHAT = {"model": ART.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with start_emulators(EmulatorOptions(ART, max_queue=1)) as urls:
        yield urls[0]


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes | dict[str, Any],
    headers: dict[str, str] | None = None, path: str = "/v1/chat/completions",
) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with session.post(url + path, data=data, headers=hdrs) as resp:
        return resp.status, await resp.json(), CIMultiDict(resp.headers)


CASES = [
    (b"{not json", 400, "invalid_json", None),
    (CHAT | {"max_tokens": "3"}, 400, "invalid_type", "max_tokens"),
    ({"model": ART.model}, 400, "missing_required_parameter", "messages"),
    (CHAT | {"n": 2}, 400, "unsupported_parameter", "n"),
    (CHAT | {"frobnicate": 1}, 400, "unknown_parameter", "frobnicate"),
    (CHAT | {"model": "gpt-4o"}, 404, "model_not_found", "model"),
    (CHAT | {"max_tokens": 65}, 400, "invalid_value", "max_tokens"),
    (CHAT | {"messages": [{"role": "user", "content": "a " * 250}], "max_tokens": 64},
     400, "context_length_exceeded", "messages"),
    (CHAT | {"messages": [{"role": "user", "content": "a " * 260}]} | {"max_tokens": None},
     400, "context_length_exceeded", "messages"),
    (CHAT | {"stream": True, "n": 3}, 400, "unsupported_parameter", "n"),
]
IDS = ["malformed-json", "wrong-type", "missing-messages", "n-above-1", "unknown-param",
       "unknown-model", "max-tokens-above-cap", "context-length", "prompt-alone-too-long",
       "stream-refused-with-status"]


@pytest.mark.parametrize(("body", "status", "code", "param"), CASES, ids=IDS)
async def test_refusals_have_status_and_openai_shape(
    url: str, body: bytes | dict[str, Any], status: int, code: str, param: str | None
) -> None:
    async with aiohttp.ClientSession() as session:
        got, doc, headers = await _post(session, url, body, {"x-request-id": "r-9"})
    assert got == status
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["code"] == code
    assert doc["error"]["param"] == param
    assert headers["Content-Type"].startswith("application/json")
    assert headers["x-request-id"] == "r-9"


async def test_deadline_unreachable_is_refused_at_once_with_the_prediction(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        # Occupies the slot for 50 + 29 * 10 = 340 ms.
        long = asyncio.create_task(_post(session, url, CHAT | {"max_tokens": 30}))
        await asyncio.sleep(0.05)
        status, doc, headers = await _post(
            session, url, CHAT, {"x-lpu-deadline-ms": "100"}
        )
        assert status == 429
        assert doc["error"]["code"] == "deadline_unreachable"
        # At most the long request's whole 340 ms slot plus this request's own 50 ms prefill
        # (less by however long the long one has already run when this one arrives).
        predicted = float(headers["x-lpu-predicted-ttft-ms"])
        assert 100 < predicted <= 390
        status, _, headers = await _post(session, url, CHAT, {"x-lpu-deadline-ms": "5000"})
        assert status == 200
        assert 50 < float(headers["x-lpu-predicted-ttft-ms"]) <= 390
        assert (await long)[0] == 200


async def test_bad_deadline_header_is_a_400(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        status, doc, _ = await _post(session, url, CHAT, {"x-lpu-deadline-ms": "soon"})
    assert status == 400
    assert doc["error"]["param"] == "x-lpu-deadline-ms"


async def test_queue_bound_refuses_with_503_when_full(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        running = asyncio.create_task(_post(session, url, CHAT | {"max_tokens": 20}))
        await asyncio.sleep(0.03)
        queued = asyncio.create_task(_post(session, url, CHAT))
        await asyncio.sleep(0.03)
        status, doc, headers = await _post(session, url, CHAT)
        assert status == 503
        assert doc["error"]["code"] == "queue_full"
        assert doc["error"]["type"] == "service_unavailable"
        assert "x-lpu-predicted-ttft-ms" in headers
        assert [(await running)[0], (await queued)[0]] == [200, 200]
        async with session.get(url + "/metrics") as resp:
            text = await resp.text()
    assert 'lpu:requests_rejected_total{reason="queue_full"} 1.0' in text
