"""The router's parser and a real emulator process agree (property-based): a body the shared
parser refuses, the emulator refuses with the same status and code; a body it accepts, the
emulator serves or refuses for a reason of its own -- never with a 5xx. Bodies include astral
characters, escaped surrogate pairs, vLLM's sampling parameters and lone surrogate escapes."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpu_protocol.artifact import builtin_artifact
from lpu_protocol.openai_api import APIError, parse_request

ARTIFACT = "llama-3.1-8b-2k"


@pytest.fixture(scope="module")
def emulator() -> Iterator[http.client.HTTPConnection]:
    """``lpu-emulator`` in its own process on an ephemeral loopback port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpu_emulator", "--artifact", ARTIFACT, "--port", "0",
         "--time-scale", "0.001"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        yield conn
        conn.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


text = st.text(max_size=12)  # any code point but surrogates: astral ones included
leaf = st.none() | st.booleans() | st.integers(-3, 3000) | st.floats(-1, 3) | text
values = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(text, inner, max_size=3), max_leaves=6)
part = st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text", "image_url"]),
                              "text": text | values})
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "wizard"])},
    optional={"content": text | st.lists(part, max_size=2) | values, "name": text | values})
MODELS = [builtin_artifact(ARTIFACT).model, ARTIFACT, "no-such-model"]
wild = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS) | values, "messages": st.lists(message, max_size=3)},
    optional={
        "max_tokens": st.integers(-1, 1100) | values, "stream": st.booleans() | values,
        "seed": st.integers(0, 2**31) | values, "temperature": st.floats(0, 2.5) | values,
        "ignore_eos": st.booleans() | values, "min_tokens": st.integers(-1, 40) | values,
        "top_k": st.integers(-1, 50) | values, "min_p": st.floats(0, 1.2) | values,
        "repetition_penalty": st.floats(0, 2) | values, "stop": values,
        "tools": st.lists(st.dictionaries(text, values, max_size=2), max_size=2) | values,
        "frobnicate": values,
    })
good_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]),
     "content": text | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}),
                                min_size=1, max_size=2)})
valid = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS[:2]), "messages": st.lists(good_message, min_size=1,
                                                                max_size=3)},
    optional={
        "max_tokens": st.integers(1, 64), "stream": st.booleans(),
        "seed": st.integers(0, 2**31), "ignore_eos": st.booleans(),
        "min_tokens": st.integers(0, 8), "top_k": st.integers(-1, 50),
        "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function":
                          st.fixed_dictionaries({"name": text})}), max_size=2),
        "user": text, "metadata": st.dictionaries(text, text, max_size=2),
    })
bodies = valid | wild
LONE = [b"\\ud800", b"\\udbff\\u0041", b"\\udc00", b"\\ud83d\\ude00\\ude00"]


def _post(conn: http.client.HTTPConnection, raw: bytes) -> tuple[int, dict[str, Any]]:
    conn.request("POST", "/v1/chat/completions", body=raw,
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    try:
        doc: dict[str, Any] = json.loads(data) if resp.status != 200 else {}
    except ValueError:  # not an OpenAI error body (an unhandled failure's text)
        doc = {"body": data.decode(errors="replace")}
    return resp.status, doc


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=bodies, ascii_only=st.booleans(), lone=st.none() | st.sampled_from(LONE),
       in_message=st.booleans())
def test_emulator_agrees_with_the_parser_and_never_fails(
        emulator: http.client.HTTPConnection, body: dict[str, Any], ascii_only: bool,
        lone: bytes | None, in_message: bool) -> None:
    raw = json.dumps(body, ensure_ascii=ascii_only).encode()
    if lone is not None:  # text the parser reads, holding a lone surrogate
        where = raw.find(b'"messages": [')
        if where >= 0 and in_message:
            at = where + len(b'"messages": [')
            sep = b"" if raw[at:at + 1] == b"]" else b", "
            raw = raw[:at] + b'{"role": "user", "content": "a' + lone + b'b"}' + sep + raw[at:]
        else:
            raw = raw[:-1] + b', "user": "a' + lone + b'b"}'
    try:
        parse_request(raw, "chat")
        expected: tuple[int, str | None] | None = None
    except APIError as exc:
        expected = (exc.status, exc.code)
    status, doc = _post(emulator, raw)
    assert status < 500, (raw, doc)
    if expected is not None:
        assert (status, doc["error"]["code"]) == expected, (raw, doc)
    else:
        assert status == 200 or doc["error"]["code"] in (
            "model_not_found", "context_length_exceeded", "invalid_value"), (raw, doc)
