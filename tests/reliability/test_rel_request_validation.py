"""One request validation for router and emulator, on loopback: hostile bodies get a clear 400
from the router and never reach (or hurt) a backend; load tools' vLLM parameters are served;
the forwarded body is the client's bytes with only the allowance and the model spliced in."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from live_processes import emulator_process, router_process
from prometheus_client.parser import text_string_to_metric_families
from stack import (
    ARTIFACT,
    MODEL,
    FakeBackend,
    Stack,
    assert_invariant,
    assert_settled,
    chat,
    emulator_options,
    error_code,
    fake_backend,
    post,
    router_config,
    serve_router,
)

from lpu_emulator.lengths import OutputLength
from lpu_emulator.server import start_emulators

SURROGATE = (b'{"model": "' + MODEL.encode() + b'", "max_tokens": 4, "messages": '
             b'[{"role": "user", "content": "hi \\ud800 there"}]}')


async def _emulator_rejections(urls: list[str]) -> float:
    """Requests the emulators refused or failed, from their /metrics."""
    total = 0.0
    async with aiohttp.ClientSession() as s:
        for url in urls:
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("lpu:requests_rejected_total{"))
    return total


async def test_lone_surrogate_is_refused_at_the_router_and_backends_stay_up(
        tmp_path: Path) -> None:
    """The router (``lpu-router serve``) in front of two emulator processes: three such requests
    used to eject both replicas (the emulator answered 500 and each counted against health)."""
    async with emulator_process(ARTIFACT, replicas=2) as urls:
        cfg = tmp_path / "router.toml"
        backends = ", ".join(f'"{u}"' for u in urls)
        cfg.write_text(f"""
[server]
port = 0
[health]
interval_s = 0.2
eject_after_failures = 2
eject_for_s = 30
[[buckets]]
name = "short"
model = "{MODEL}"
artifact = "{ARTIFACT}"
time_scale = 0.05
backends = [{backends}]
""")
        async with router_process(cfg) as (_, port), aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{port}"
            headers = {"Content-Type": "application/json"}
            for _ in range(6):
                async with s.post(base + "/v1/chat/completions", data=SURROGATE,
                                  headers=headers) as r:
                    body = await r.read()
                assert r.status == 400, body
                assert error_code(body) == "invalid_value"
                assert json.loads(body)["error"]["param"] == "messages[0].content"
            assert await _emulator_rejections(urls) == 0  # no backend saw one
            for _ in range(6):
                async with s.post(base + "/v1/chat/completions", json=chat(max_tokens=4)) as r:
                    assert r.status == 200, await r.read()
            async with s.get(base + "/metrics") as r:
                text = await r.text()
            assert_invariant(text)
            assert "lpu_router_upstream_errors_total{" not in text
            up = {x.labels["backend"]: x.value for fam in text_string_to_metric_families(text)
                  for x in fam.samples if x.name == "lpu_router_backend_up"}
            assert up == {u: 1.0 for u in urls}  # both replicas still in service


async def test_emulator_refuses_a_lone_surrogate_with_a_400() -> None:
    async with start_emulators(emulator_options()) as (url,), aiohttp.ClientSession() as s:
        body = SURROGATE.replace(MODEL.encode(), ARTIFACT.encode())
        async with s.post(url + "/v1/chat/completions", data=body,
                          headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            assert error_code(await r.read()) == "invalid_value"


def _deep(depth: int, allowance: bytes) -> bytes:
    return (b'{"model":"' + MODEL.encode() + b'",' + allowance + b'"messages":[{"role":"user",'
            b'"content":"x"}],"metadata":' + b"[" * depth + b"]" * depth + b"}")


async def test_deep_bodies_are_400_before_any_backend(emulator_router: Stack) -> None:
    """Bodies that the JSON parser takes (below the interpreter's recursion limit, wherever
    the stack is) but that re-serialising them failed on (500) -- with no allowance, or one
    above the cap: every depth over the bound gets the same 400."""
    stack = emulator_router
    answers: dict[int, tuple[int, str | None]] = {}
    for depth in (65, 200, *range(850, 1001)):
        allowance = b'"max_tokens":100000,' if depth % 2 else b""
        status, _, body = await post(stack, _deep(depth, allowance))
        answers[depth] = (status, json.loads(body).get("error", {}).get("param"))
    wrong = {d: a for d, a in answers.items() if a != (400, "metadata")}
    assert not wrong, f"500 at {[d for d, a in wrong.items() if a[0] == 500]}: {wrong}"
    status, _, body = await post(stack, _deep(62, b""))  # within the bound: served
    assert status == 200, body
    assert await _emulator_rejections(stack.backends) == 0
    await assert_settled(stack)


async def test_huge_model_name_is_not_echoed_whole(emulator_router: Stack) -> None:
    stack = emulator_router
    status, _, body = await post(stack, {**chat(), "model": "m" * 1_000_000})
    assert status == 404 and error_code(body) == "model_not_found"
    assert len(body) < 2048
    await assert_settled(stack)


# -- foreign clients: load tools' parameters --------------------------------------------------

GUIDELLM_COMPLETION = {"model": MODEL, "prompt": "Tell me something.", "max_tokens": 24,
                       "stop": None, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
VLLM_BENCH_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me."}],
                   "temperature": 0.0, "max_completion_tokens": 24, "stream": True,
                   "stream_options": {"include_usage": True}, "ignore_eos": True, "top_k": 20,
                   "min_p": 0.0, "repetition_penalty": 1.0}


def _stream_usage(body: bytes) -> dict[str, Any]:
    events = [json.loads(line[6:]) for line in body.split(b"\n")
              if line.startswith(b"data: {")]
    usage: dict[str, Any] = events[-1]["usage"]
    return usage


@contextlib.asynccontextmanager
async def _short_lengths_stack() -> AsyncIterator[Stack]:
    """A router over one emulator whose requests stop early (geometric lengths, mean 2)."""
    options = dataclasses.replace(emulator_options(), output_length=OutputLength("geometric",
                                                                                mean=2.0))
    async with start_emulators(options) as urls, serve_router(router_config(urls)) as s:
        yield s


@pytest.mark.parametrize(("path", "body"), [("/v1/completions", GUIDELLM_COMPLETION),
                                            ("/v1/chat/completions", VLLM_BENCH_CHAT)],
                         ids=["guidellm", "vllm-bench"])
async def test_load_tool_bodies_are_served_with_ignore_eos_honoured(path: str,
                                                                    body: dict[str, Any]) -> None:
    async with _short_lengths_stack() as stack:
        for _ in range(3):
            status, _, raw = await post(stack, body, path=path)
            assert status == 200, raw
            assert _stream_usage(raw)["completion_tokens"] == 24  # exactly the allowance
        floor = {**body, "ignore_eos": False, "min_tokens": 20}
        status, _, raw = await post(stack, floor, path=path)
        assert status == 200, raw
        assert _stream_usage(raw)["completion_tokens"] >= 20
        await assert_settled(stack)


# -- the parameter policy per bucket and the upstream model name ------------------------------

@contextlib.asynccontextmanager
async def _recording_backend() -> AsyncIterator[tuple[FakeBackend, list[bytes]]]:
    """The harness's fake backend, answering one chat completion and recording each body."""
    bodies: list[bytes] = []

    async def completion(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.read())
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "served",
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    async with fake_backend(completion) as fake:
        yield fake, bodies


def _unique_keys(raw: bytes) -> dict[str, Any]:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        assert len(pairs) == len(dict(pairs)), f"duplicate keys in {raw!r}"
        return dict(pairs)

    doc: dict[str, Any] = json.loads(raw, object_pairs_hook=unique)
    return doc


async def test_bucket_policy_after_placement_and_upstream_model_splice() -> None:
    async with _recording_backend() as (backend, bodies):
        shape = {"artifact": ARTIFACT, "time_scale": 0.05, "backends": [backend.url]}
        config = router_config([backend.url], extra={
            "server": {"extra_params": "pass"},
            "buckets": [
                {"name": "strict", "model": "strict-model", "extra_params": "refuse", **shape},
                {"name": "vllm", "model": MODEL, "upstream_model": "meta-llama/Llama-3.1-8B",
                 "default_max_tokens": 64, **shape},
            ]})
        async with serve_router(config) as stack:
            refused = {**chat(), "model": "strict-model", "top_k": 5}
            status, _, raw = await post(stack, refused)
            assert (status, error_code(raw)) == (400, "unknown_parameter")
            assert json.loads(raw)["error"]["param"] == "top_k"
            assert bodies == []

            # no allowance, a parameter nobody defines, odd spacing and non-ASCII text
            sent = (b'{ "model" : "' + MODEL.encode() + b'",\n  "chat_template_kwargs": {"x": 1},'
                    rb' "messages": [{"role": "user", "content": "h\u00e9llo \ud83d\ude00'
                    + ' ü"}] }'.encode())
            status, _, raw = await post(stack, sent)
            assert status == 200, raw
            got = bodies[-1]
            doc = _unique_keys(got)
            assert doc == {**json.loads(sent), "model": "meta-llama/Llama-3.1-8B",
                           "max_tokens": 64}
            # Only the spliced members changed: the rest is the client's bytes.
            tail = sent[sent.index(b'"chat_template_kwargs"'):]
            assert got.endswith(tail)

            # an allowance over the cap, given twice (both names): both rewritten, no dupes
            both = {**chat(max_tokens=5000), "max_completion_tokens": 4000}
            status, _, raw = await post(stack, both)
            assert status == 200, raw
            doc = _unique_keys(bodies[-1])
            assert doc["max_tokens"] == doc["max_completion_tokens"] == 1024
            assert doc["model"] == "meta-llama/Llama-3.1-8B"
            await assert_settled(stack)
