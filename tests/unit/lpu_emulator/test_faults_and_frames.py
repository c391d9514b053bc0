"""Fault settings and plans; SSE frames and bodies in OpenAI's shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lpu_emulator.faults import FaultKind, FaultSettings, plan_faults
from lpu_emulator.frames import ResponseIdentity, StreamFrames, Timing, completion_body, usage
from lpu_emulator.text import TokenText
from lpu_protocol.openai_api import APIError


def test_no_faults_by_default_and_no_draws() -> None:
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert plan_faults(FaultSettings(), rng).clean
    assert rng.bit_generator.state == before


def test_fault_plans_are_seeded() -> None:
    s = FaultSettings(error_rate=0.2, stall_rate=0.3, stall_s=1.5, crash_rate=0.2,
                      crash_after_tokens=4, garbage_rate=0.2, stream_error_rate=0.2)
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    plans = [plan_faults(s, rng1) for _ in range(300)]
    assert plans == [plan_faults(s, rng2) for _ in range(300)]
    kinds = {p.break_kind for p in plans}
    assert kinds == {None, FaultKind.CRASH, FaultKind.GARBAGE, FaultKind.STREAM_ERROR}
    assert any(p.error for p in plans)
    assert any(p.stall_at == 1 and p.stall_s == 1.5 for p in plans)
    assert all(p.break_at == 4 for p in plans if p.break_kind)


def test_certain_error_always_errors() -> None:
    rng = np.random.default_rng(0)
    assert all(plan_faults(FaultSettings(error_rate=1.0), rng).error for _ in range(20))


def test_update_replaces_given_keys_only() -> None:
    s = FaultSettings(crash_rate=0.5).updated({"error_rate": 1, "crash_after_tokens": 3})
    assert (s.error_rate, s.crash_rate, s.crash_after_tokens) == (1.0, 0.5, 3)


def test_update_reports_every_problem() -> None:
    with pytest.raises(ValueError) as info:
        FaultSettings().updated({"error_rate": 2, "bogus": 1, "stall_s": "x"})
    text = str(info.value)
    assert "faults.bogus: unknown key" in text
    assert "faults.stall_s: expected a number" in text
    with pytest.raises(ValueError, match=r"faults\.error_rate"):
        FaultSettings().updated({"error_rate": 2})


def _ident(kind: str) -> ResponseIdentity:
    return ResponseIdentity(
        kind=kind,  # type: ignore[arg-type]
        id="chatcmpl-1" if kind == "chat" else "cmpl-1", created=1700000000, model="m",
        system_fingerprint="fp_x", groq_id="req_1",
    )


def _events(raw: bytes) -> list[str]:
    assert raw.endswith(b"\n\n")
    events = raw.decode().split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e.removeprefix("data: ") for e in events]


TIMING = Timing(queue_s=0.25, prompt_s=0.1, completion_s=0.02)


@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "usage"])
def test_chat_stream_frames(include_usage: bool) -> None:
    text = TokenText()
    frames = StreamFrames(_ident("chat"), include_usage)
    ids = [0, 1, 2]
    raw = frames.start() + frames.tokens(text.json, ids)
    raw += frames.finish("length", usage(7, 3), TIMING)
    events = _events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:4]) == (
        text.join(ids)
    )
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" for c in chunks)
    last = chunks[4]
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["x_groq"]["usage"]["total_time"] == pytest.approx(0.12)
    assert last["x_groq"]["usage"]["queue_time"] == pytest.approx(0.25)
    if include_usage:
        assert all(c["usage"] is None for c in chunks[:5])
        assert chunks[5]["choices"] == []
        assert chunks[5]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3,
                                      "total_tokens": 10}
        assert len(chunks) == 6
    else:
        assert all("usage" not in c for c in chunks)
        assert len(chunks) == 5


def test_completion_stream_frames() -> None:
    text = TokenText()
    frames = StreamFrames(_ident("completion"), True)
    assert frames.start() == b""
    events = _events(frames.tokens(text.json, [5]) + frames.finish("stop", usage(1, 1), TIMING))
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["text"] == text.text[5]
    assert chunks[0]["object"] == "text_completion"
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[2]["choices"] == [] and chunks[2]["usage"]["total_tokens"] == 2


def test_error_and_garbage_frames() -> None:
    frames = StreamFrames(_ident("chat"), False)
    err = json.loads(_events(frames.error(APIError(500, "boom", type="server_error")))[0])
    assert err == {"error": {"message": "boom", "type": "server_error", "param": None,
                             "code": None}}
    with pytest.raises(ValueError):
        json.loads(_events(frames.garbage())[0])


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_completion_bodies(kind: str) -> None:
    body = json.loads(completion_body(_ident(kind), "hi there", "stop", usage(3, 2), TIMING))
    choice = body["choices"][0]
    if kind == "chat":
        assert body["object"] == "chat.completion"
        assert choice["message"] == {"role": "assistant", "content": "hi there"}
    else:
        assert body["object"] == "text_completion"
        assert choice["text"] == "hi there"
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == 5
    assert body["usage"]["queue_time"] == pytest.approx(0.25)
    assert body["x_groq"]["id"] == "req_1"
