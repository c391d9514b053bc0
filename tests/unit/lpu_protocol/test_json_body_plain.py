"""The body reader's quick path: spans found only when a splice asks (and then exactly, however
the value falls across the decoding window), bodies with non-ASCII text or its escapes read at
C speed, and what it must leave to the member-wise parse (keys JSON can spell another way)."""

from __future__ import annotations

import json

import pytest

from lpu_protocol.json_body import MAX_DEPTH, BodyError, parse_body

REC = frozenset({"model", "max_tokens", "max_completion_tokens"})

# Values whose end falls on every offset around the first 64-byte window, numbers included
# (a number cut by a window reads as a shorter one: "1.5e+" scans as 1).
VALUES = [
    *(b"1" * k + b".5e+3" for k in range(52, 70)),
    *(b"9" * k for k in range(60, 70)),
    *('"' + "é" * k + '"' for k in range(25, 36)),
    *(b'"' + b"\\u00e9" * k + b'"' for k in range(8, 13)),
    b'{"a": [1, 2, {"b": "' + b"x" * 80 + b'"}]}',
    b"true", b"null", b"-0", b"64",
]


@pytest.mark.parametrize("value", VALUES, ids=[f"value{i}" for i in range(len(VALUES))])
@pytest.mark.parametrize("last", [False, True], ids=["middle", "last"])
def test_late_spans_are_the_values_bytes(value: bytes | str, last: bool) -> None:
    v = value.encode() if isinstance(value, str) else value
    raw = b'{"messages": [{"content": "caf\xc3\xa9"}], "max_tokens": ' + v + (
        b"}" if last else b', "z": "\xc3\xbc"}')
    body = parse_body(raw, REC)
    assert body.occurrences("max_tokens") == 1
    (start, end), = body.spans["max_tokens"]
    assert raw[start:end] == v
    out = body.splice({"max_tokens": b"7", "model": b'"u"'})
    assert json.loads(out) == {**json.loads(raw), "max_tokens": 7, "model": "u"}


def test_escaped_non_ascii_text_is_plain_and_exact() -> None:
    doc = {"messages": [{"role": "user", "content": "naïve café 😀"}], "model": "m",
           "max_tokens": 5}
    raw = json.dumps(doc).encode()  # ensure_ascii: \u00ef, \u00e9, \ud83d\ude00
    body = parse_body(raw, REC)
    assert body.value == doc
    (start, end), = body.spans["model"]
    assert raw[start:end] == b'"m"'


@pytest.mark.parametrize(("raw", "key", "want"), [
    # the top-level key spelled by escapes, its literal only nested: the member-wise parse
    (b'{"x": {"model": 1}, "\\u006dodel": "q"}', "model", b'"q"'),
    (b'{"x": {"mod\\u0065l": 1}, "model": "q"}', "model", b'"q"'),
    # a key JSON can spell as "a\/b": never searched for literally
    (b'{"x": {"a/b": 1}, "a\\/b": 2}', "a/b", b"2"),
    ('{"x": {"ü": 1}, "\\u00fc": 2}'.encode(), "ü", b"2"),
])
def test_a_key_spelled_another_way_is_found_member_by_member(raw: bytes, key: str,
                                                             want: bytes) -> None:
    body = parse_body(raw, frozenset({key}))
    (start, end), = body.spans[key]
    assert raw[start:end] == want


def test_duplicates_are_counted_and_every_one_recorded() -> None:
    raw = b'{"model": "a", "max_tokens": 3, "model": "b"}'
    body = parse_body(raw, REC)
    assert (body.occurrences("model"), body.occurrences("max_tokens")) == (2, 1)
    assert [raw[s:e] for s, e in body.spans["model"]] == [b'"a"', b'"b"']
    assert body.occurrences("max_completion_tokens") == 0


def _padded_nested(depth: int, pad: int) -> bytes:
    inner = depth - 1
    return (b'{"p": "' + b"x" * pad + b'", "x": ' + b"[" * inner + b"1" + b"]" * inner + b"}")


@pytest.mark.parametrize("pad", [0, 200, 1000], ids=["short", "translate", "find"])
def test_depth_is_checked_whatever_the_body_size(pad: int) -> None:
    assert parse_body(_padded_nested(MAX_DEPTH, pad), REC).value["p"] == "x" * pad
    with pytest.raises(BodyError) as info:
        parse_body(_padded_nested(MAX_DEPTH + 1, pad), REC)
    assert (info.value.problem, info.value.path) == ("depth", "x")
    brackets_in_text = b'{"p": "' + b"[{" * 100 + b"x" * pad + b'"}'
    assert parse_body(brackets_in_text, REC).value == json.loads(brackets_in_text)
