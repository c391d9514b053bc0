"""A write's token frames (``StreamFrames.tokens``, one join for all its tokens) are, byte for
byte, the frames of its tokens one by one, for chat, completions and tool calls; a frame is
OpenAI's chunk."""

from __future__ import annotations

import pytest

from lpu_emulator.frames import ResponseIdentity, StreamFrames
from lpu_emulator.text import TokenText
from lpu_emulator.tools import ToolCall

TEXT = TokenText()
CALL = ToolCall(id="call_1", name="f", fragments=('{"a"', ": ", '"b"', "}"))


def _frames(kind: str, include_usage: bool, call: ToolCall | None) -> StreamFrames:
    ident = ResponseIdentity(kind=kind,  # type: ignore[arg-type]
                             id="chatcmpl-1" if kind == "chat" else "cmpl-1",
                             created=1700000000, model="m", system_fingerprint="fp_x",
                             groq_id="req_1")
    return StreamFrames(ident, include_usage, call)


def test_a_chat_token_frame_is_openais_chunk() -> None:
    frames = _frames("chat", False, None)
    token = TEXT.text[7]
    assert frames.tokens(TEXT.json, [7]) == (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"m","system_fingerprint":"fp_x","choices":[{"index":0,"delta":{"content":'
        + TEXT.json[7] + b'},"logprobs":null,"finish_reason":null}]}\n\n')
    assert TEXT.json[7].decode() == f'"{token}"'


@pytest.mark.parametrize(("kind", "include_usage", "call"), [
    ("chat", False, None), ("chat", True, None), ("completion", False, None),
    ("completion", True, None), ("chat", False, CALL),
], ids=["chat", "chat-usage", "completion", "completion-usage", "tool-call"])
def test_a_writes_frames_are_its_tokens_frames_in_order(
    kind: str, include_usage: bool, call: ToolCall | None
) -> None:
    frames = _frames(kind, include_usage, call)
    ids = [0, 1, 2, 3] if call is not None else [5, 3, 5, 40, 1, 0, 2]
    one_by_one = b"".join(frames.tokens(TEXT.json, [i]) for i in ids)
    assert frames.tokens(TEXT.json, ids) == one_by_one
    assert one_by_one.count(b"data: ") == len(ids)
    assert frames.tokens(TEXT.json, []) == b""
