"""The request parser checks only the optional members a body gives, yet reports the same fault
of several whatever their order in the body; the common message and the full reading agree;
``forward_body`` splices exactly on a request whose spans were never asked for."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from lpu_protocol.openai_api import APIError, forward_body, parse_request

ORDER = ["tools", "max_completion_tokens", "max_tokens", "n", "best_of", "temperature", "top_p",
         "presence_penalty", "frequency_penalty", "seed", "stream", "stream_options",
         "service_tier", "user", "ignore_eos", "min_tokens", "top_k", "min_p",
         "repetition_penalty"]
"""The order in which faults of optional members are reported (of several, the first)."""
BAD: dict[str, Any] = {key: "x" for key in ORDER} | {"service_tier": 5, "user": 5}


def _fault(members: list[tuple[str, Any]]) -> str | None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    raw = json.dumps({**body, **dict(members)}).encode()
    with pytest.raises(APIError) as info:
        parse_request(raw, "chat")
    return info.value.param


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(ORDER, 2)),
                         ids=[f"{a}+{b}" for a, b in itertools.combinations(ORDER, 2)])
def test_the_first_fault_in_the_documented_order_is_reported(first: str, second: str) -> None:
    pair = [(first, BAD[first]), (second, BAD[second])]
    assert _fault(pair) == first
    assert _fault(pair[::-1]) == first


def test_dependent_checks_see_their_members_whatever_the_body_order() -> None:
    raw = b'{"stream_options": {"include_usage": true}, "min_tokens": 9, "model": "m",' \
          b' "messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 9}'
    req = parse_request(raw, "chat")
    assert (req.stream, req.include_usage, req.min_tokens, req.max_tokens) == (True, True, 9, 9)
    with pytest.raises(APIError) as info:
        parse_request(raw.replace(b'"max_tokens": 9', b'"max_tokens": 8'), "chat")
    assert info.value.param == "min_tokens"


@pytest.mark.parametrize("message", [
    {"role": "user", "content": "hi"},
    {"role": "user", "content": ""},
    {"role": "user", "content": "hi", "name": "ann"},
    {"role": "assistant", "content": None},
    {"content": "hi", "role": "system"},
    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
], ids=["plain", "empty", "named", "null", "reordered", "parts"])
def test_common_and_full_message_readings_agree(message: dict[str, Any]) -> None:
    """The same text from a message read whole or member by member (a third, unused member
    sends the common shape the full way)."""
    def text(m: dict[str, Any]) -> str:
        raw = json.dumps({"model": "m", "messages": [m]}).encode()
        return parse_request(raw, "chat").messages[0].text
    assert text(message) == text({**message, "tool_calls": None})


M = b'"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(("raw", "max_tokens", "model", "want"), [
    (b'{"model": "m", "max_tokens": 5, %s}', 5, None, b'{"model": "m", "max_tokens": 5, %s}'),
    (b'{"model": "m", "max_tokens": 5, %s}', 3, "u", b'{"model": "u", "max_tokens": 3, %s}'),
    (b'{"model": "m", %s}', 3, None, b'{"max_tokens":3,"model": "m", %s}'),
    (b'{"max_tokens": null, "model": "m", %s}', 3, None, b'{"max_tokens": 3, "model": "m", %s}'),
    ('{"model": "m", "x": "é", "max_completion_tokens": 5, %s}'.encode(), 4, "é",
     '{"model": "\\u00e9", "x": "é", "max_completion_tokens": 4, %s}'.encode()),
    (b'{"model": "m", "x": "\\u00e9", "max_tokens": 5, "max_tokens": 5, %s}', 5, None,
     b'{"model": "m", "x": "\\u00e9", "max_tokens": 5, "max_tokens": 5, %s}'),
    (b'{"model": "m", "max_tokens": 9, "max_tokens": 5, %s}', 5, None,
     b'{"model": "m", "max_tokens": 5, "max_tokens": 5, %s}'),
], ids=["same", "both", "insert", "null", "utf8", "dup-same", "dup-differs"])
def test_forward_body_of_a_fresh_request(raw: bytes, max_tokens: int, model: str | None,
                                         want: bytes) -> None:
    req = parse_request(raw % M, "chat", params=None)  # its spans not asked for yet
    assert forward_body(req, max_tokens, model) == want % M


@pytest.mark.parametrize("number", [b"9" * 400, b"-" + b"9" * 400, b"1e400", b"-1e400"],
                         ids=["huge", "-huge", "inf", "-inf"])
def test_a_number_past_float_range_is_out_of_range_not_a_failure(number: bytes) -> None:
    raw = b'{"model": "m", %s, "temperature": %s}' % (M, number)
    with pytest.raises(APIError) as info:
        parse_request(raw, "chat")
    assert (info.value.status, info.value.param, info.value.code) == (
        400, "temperature", "invalid_value")
