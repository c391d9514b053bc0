from __future__ import annotations

import json
from typing import Any

import pytest

from router.openai_api import APIError, context_length_error, parse_request
from router.tokens import EstimateCounter, prompt_tokens


def chat(**kw: Any) -> bytes:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    return json.dumps(body).encode()


def test_valid_chat_request() -> None:
    req = parse_request(
        chat(max_completion_tokens=7, stream=True, stream_options={"include_usage": True},
             service_tier="flex", seed=3), "chat"
    )
    assert req.kind == "chat"
    assert req.max_tokens == 7 and req.max_tokens_param == "max_completion_tokens"
    assert req.stream and req.include_usage
    assert req.service_tier == "flex" and req.seed == 3
    assert req.messages[0].role == "user" and req.messages[0].text == "hi"


def test_content_parts_and_tool_calls_are_text() -> None:
    body = chat(messages=[
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
    ])
    req = parse_request(body, "chat")
    assert req.messages[0].text == "a\nb"
    assert '"name":"f"' in req.messages[1].text


def test_completion_prompt_forms() -> None:
    r = parse_request(b'{"model": "m", "prompt": "hello", "max_tokens": 3}', "completion")
    assert r.prompt == "hello" and r.max_tokens == 3
    r = parse_request(b'{"model": "m", "prompt": [1, 2, 3]}', "completion")
    assert r.prompt_token_ids == 3


CASES = [
    (b"{not json", "invalid_json", None),
    (b"\xff\xfe", "invalid_json", None),
    (b"[1, 2]", "invalid_json", None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "missing_required_parameter", "model"),
    (b'{"model": 3, "messages": []}', "invalid_type", "model"),
    (b'{"model": "m"}', "missing_required_parameter", "messages"),
    (b'{"model": "m", "messages": []}', "invalid_value", "messages"),
    (b'{"model": "m", "messages": "hi"}', "invalid_type", "messages"),
    (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "invalid_value",
     "messages[0].role"),
    (b'{"model": "m", "messages": [{"content": "x"}]}', "missing_required_parameter",
     "messages[0].role"),
    (b'{"model": "m", "messages": [{"role": "user"}]}', "missing_required_parameter",
     "messages[0].content"),
    (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
     "invalid_value", "messages[0].content[0].type"),
    (chat(max_tokens=-1), "invalid_value", "max_tokens"),
    (chat(max_tokens=0), "invalid_value", "max_tokens"),
    (chat(max_tokens=10**12), "invalid_value", "max_tokens"),
    (chat(max_tokens="5"), "invalid_type", "max_tokens"),
    (chat(max_tokens=True), "invalid_type", "max_tokens"),
    (chat(n=2), "unsupported_parameter", "n"),
    (chat(temperature=5), "invalid_value", "temperature"),
    (chat(stream="yes"), "invalid_type", "stream"),
    (chat(stream_options={"include_usage": True}), "invalid_value", "stream_options"),
    (chat(frobnicate=1), "unknown_parameter", "frobnicate"),
]


@pytest.mark.parametrize(
    ("raw", "code", "param"), CASES, ids=[f"case{i}" for i in range(len(CASES))]
)
def test_bad_requests_are_400_in_openai_shape(raw: bytes, code: str, param: str | None) -> None:
    with pytest.raises(APIError) as info:
        parse_request(raw, "chat")
    err = info.value
    assert err.status == 400
    assert err.code == code
    assert err.param == param
    body = json.loads(err.to_json())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]


def test_context_length_message() -> None:
    err = context_length_error(2048, 2000, 100)
    assert err.status == 400 and err.code == "context_length_exceeded"
    assert "2048" in err.message and "2100" in err.message


def test_prompt_tokens_include_template() -> None:
    counter = EstimateCounter()
    one = parse_request(chat(), "chat")
    two = parse_request(
        chat(messages=[{"role": "system", "content": "hi"}, {"role": "user", "content": "hi"}]),
        "chat",
    )
    assert prompt_tokens(two, counter) - prompt_tokens(one, counter) == 4 + counter.count("hi")
    assert prompt_tokens(one, counter) == 1 + 4 + 4 + counter.count("hi")
