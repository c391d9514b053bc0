"""Client-side parsing of an OpenAI server-sent-event stream.

Bytes arrive in arbitrary chunks; :class:`SSEParser` buffers them and yields the
``data:`` payload of each complete event (events end with a blank line; ``\\r\\n``
is accepted). It never splits the stream into lines before an event is complete,
so no line length limit applies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["DONE", "SSEParser", "StreamChunk", "interpret"]

DONE = "[DONE]"


class SSEParser:
    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        """Payloads of the events completed by ``data`` (multi-line data joined by \\n)."""
        self._buf += data
        if b"\r" in self._buf:
            self._buf = self._buf.replace(b"\r\n", b"\n")
        out: list[str] = []
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                return out
            event, self._buf = self._buf[:end], self._buf[end + 2 :]
            lines = [
                ln[5:].removeprefix(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")
            ]
            if lines:
                out.append(b"\n".join(lines).decode("utf-8", errors="replace"))


@dataclass(frozen=True, slots=True)
class StreamChunk:
    content: bool
    """The chunk carries generated text (a token)."""
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None


def interpret(payload: str) -> StreamChunk:
    """What one ``data:`` payload of a chat or legacy completion stream means."""
    try:
        obj: Any = json.loads(payload)
    except ValueError:
        return StreamChunk(False, error=f"unparseable chunk: {payload[:80]!r}")
    if not isinstance(obj, dict):
        return StreamChunk(False, error="chunk is not a JSON object")
    if "error" in obj:
        err = obj["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        return StreamChunk(False, error=f"stream error: {str(msg)[:200]}")
    content = False
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        ch = choices[0]
        delta = ch.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else ch.get("text")
        content = isinstance(text, str) and text != ""
    usage = obj.get("usage")
    if isinstance(usage, dict):
        ct, pt = usage.get("completion_tokens"), usage.get("prompt_tokens")
        return StreamChunk(
            content,
            completion_tokens=ct if isinstance(ct, int) else None,
            prompt_tokens=pt if isinstance(pt, int) else None,
        )
    return StreamChunk(content)
