"""The body reader: same values as ``json.loads``, exact top-level spans, splices that parse
back to the intended object, and the refusals (depth, lone surrogates, non-JSON)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpu_protocol.json_body import MAX_DEPTH, BodyError, parse_body

REC = frozenset({"model", "max_tokens", "max_completion_tokens"})


def _pairs(raw: bytes) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = json.loads(raw, object_pairs_hook=lambda p: p)
    return pairs


SPLICES = [
    # (body, updates, expected object) -- each result must parse to exactly that
    (b'{"model":"m","max_tokens":5}', {"max_tokens": b"9"}, {"model": "m", "max_tokens": 9}),
    (b'{"model":"m"}', {"max_tokens": b"9"}, {"max_tokens": 9, "model": "m"}),
    (b"{}", {"max_tokens": b"9"}, {"max_tokens": 9}),
    (b'  {  }  ', {"max_tokens": b"9"}, {"max_tokens": 9}),
    (b'\n{ "model" : "m" ,\n  "max_tokens"\t:\n 5 }\n', {"max_tokens": b"12", "model": b'"u"'},
     {"model": "u", "max_tokens": 12}),
    # the key nested in an object or inside a string is not the top-level member
    (b'{"model":"m","x":{"max_tokens":1},"s":"\\"max_tokens\\":2"}', {"max_tokens": b"3"},
     {"max_tokens": 3, "model": "m", "x": {"max_tokens": 1}, "s": '"max_tokens":2'}),
    (b'{"messages":[{"content":"max_tokens: 7, {\\"model\\": 1}"}],"model":"m","max_tokens":7}',
     {"max_tokens": b"4", "model": b'"vllm-name"'},
     {"messages": [{"content": 'max_tokens: 7, {"model": 1}'}], "model": "vllm-name",
      "max_tokens": 4}),
    # non-ASCII before and after the spliced member: byte offsets, not character offsets
    ('{"content":"héllo wörld 😀","max_tokens":5,"tail":"ü"}'.encode(), {"max_tokens": b"6"},
     {"content": "héllo wörld 😀", "max_tokens": 6, "tail": "ü"}),
    ('{"model":"模型","x":"é"}'.encode(), {"model": b'"m2"'}, {"model": "m2", "x": "é"}),
    (b'\xef\xbb\xbf{"model":"m"}', {"max_tokens": b"1"}, {"max_tokens": 1, "model": "m"}),
    (b'{"max_tokens":null,"model":"m"}', {"max_tokens": b"8"}, {"max_tokens": 8, "model": "m"}),
]


@pytest.mark.parametrize(("raw", "updates", "want"), SPLICES,
                         ids=[f"splice{i}" for i in range(len(SPLICES))])
def test_splice_gives_the_intended_object(raw: bytes, updates: dict[str, bytes],
                                          want: dict[str, Any]) -> None:
    out = parse_body(raw, REC).splice(updates)
    text = out.decode("utf-8-sig")
    assert json.loads(text) == want
    keys = [k for k, _ in _pairs(text.encode())]
    assert len(keys) == len(set(keys)), f"duplicate keys in {out!r}"
    # Everything else is byte for byte what the client sent.
    for key in set(json.loads(raw.decode("utf-8-sig"))) - set(updates):
        assert json.dumps(want[key], ensure_ascii=False).encode() in out or key in text


def test_duplicate_keys_are_all_rewritten() -> None:
    raw = b'{"max_tokens":5,"model":"m","max_tokens":50}'
    body = parse_body(raw, REC)
    assert body.value["max_tokens"] == 50  # the last wins, as with json.loads
    out = body.splice({"max_tokens": b"7"})
    assert _pairs(out) == [("max_tokens", 7), ("model", "m"), ("max_tokens", 7)]


def test_nothing_to_splice_returns_the_same_bytes() -> None:
    raw = b'{"model": "m",  "max_tokens": 5}'
    assert parse_body(raw, REC).splice({}) == raw


def test_unrecorded_present_member_cannot_be_spliced() -> None:
    with pytest.raises(KeyError):
        parse_body(b'{"stream":true}', REC).splice({"stream": b"false"})


json_leaf = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12,
)
top_keys = st.sampled_from(["model", "max_tokens", "max_completion_tokens", "messages", "x",
                            "ünï", "😀"]) | st.text(max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=st.lists(st.tuples(top_keys, json_values), max_size=6),
       ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 2]),
       new=st.integers(1, 10**6))
def test_parse_matches_json_loads_and_splices_parse_back(
        members: list[tuple[str, Any]], ascii_only: bool, indent: int | None,
        new: int) -> None:
    obj = dict(members)
    raw = json.dumps(obj, ensure_ascii=ascii_only, indent=indent).encode()
    body = parse_body(raw, REC)
    assert body.value == json.loads(raw)
    for key in REC & set(obj):
        (start, end), = body.spans[key]
        assert json.loads(raw[start:end]) == obj[key]
    out = body.splice({"max_tokens": str(new).encode(), "model": b'"up"'})
    assert json.loads(out) == {**obj, "max_tokens": new, "model": "up"}


def _nested(depth: int) -> bytes:
    """A body whose deepest value sits inside ``depth`` containers (the top object is 1)."""
    inner = depth - 1
    return b'{"model":"m","x":' + b"[" * inner + b"1" + b"]" * inner + b"}"


REFUSED = [
    (b"[1, 2]", "not_object", None),
    (b'"text"', "not_object", None),
    (b"{", "json", None),
    (b'{"a":1} {"b":2}', "json", None),
    (b'{"a":1,}', "json", None),
    (b'{"a":NaN}', "json", None),
    (b'{"a":-Infinity}', "json", None),
    ('{"a":"é"}'.encode("utf-16"), "json", None),
    (b'{"a":"\xc3"}', "json", None),
    (_nested(MAX_DEPTH + 1), "depth", "x"),
    (_nested(980), "depth", "x"),
    (b"[" * 3000 + b"]" * 3000, "depth", None),
    (b'{"m":[{"role":"user","content":"\\ud800"}]}', "surrogate", "m[0].content"),
    (b'{"m":"ok \\udfff"}', "surrogate", "m"),
    (b'{"a":"\\ud83d\\ude00\\ude00"}', "surrogate", "a"),
    (b'{"a":"\\\\\\ud800"}', "surrogate", "a"),
    (b'{"a":{"\\udc00":1}}', "surrogate", "a.\\udc00"),
    (b'{"\\ud800":1}', "surrogate", "\\ud800"),
]


@pytest.mark.parametrize(("raw", "problem", "path"), REFUSED,
                         ids=[f"refused{i}" for i in range(len(REFUSED))])
def test_refusals_say_what_and_where(raw: bytes, problem: str, path: str | None) -> None:
    with pytest.raises(BodyError) as info:
        parse_body(raw, REC)
    assert info.value.problem == problem
    assert info.value.path == path


ACCEPTED = [
    _nested(MAX_DEPTH),
    b'{"a":"' + b"[{" * 5000 + b'"}',  # brackets inside strings are text
    b'{"a":"\\ud83d\\ude00 \\uD83D\\uDE00"}',  # escaped pairs are astral characters
    b'{"a":"\\\\ud800"}',  # an escaped backslash, then plain text
    '{"a":"😀 é"}'.encode(),
]


@pytest.mark.parametrize("raw", ACCEPTED, ids=[f"accepted{i}" for i in range(len(ACCEPTED))])
def test_accepted_bodies_equal_json_loads(raw: bytes) -> None:
    assert parse_body(raw, REC).value == json.loads(raw)


FRAGMENTS = [b"a", b" ", b"\\n", b"\\\\", b"\\\"", b"\\u00e9", b"\\ud83d\\ude00", b"\\uD83D\\uDE00",
             b"\\ud800", b"\\uDBFF", b"\\udc00", b"\\uDFFF", b"\\\\ud800", b"\\\\\\ud800",
             "é😀".encode()]


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=12),
       pad=st.sampled_from([0, 20_000]), at_end=st.booleans())
def test_lone_surrogate_refused_exactly_when_json_loads_makes_one(parts: list[bytes], pad: int,
                                                                  at_end: bool) -> None:
    """Both scans (bytes.count + re below 16 KB, numpy above) against the decoded truth."""
    text = b'"' + b"".join(parts) + b'"'
    filler = b'"' + b"x" * pad + b'"'
    raw = b'{"p":' + filler + b',"t":' + text + b"}" if at_end else \
        b'{"t":' + text + b',"p":' + filler + b"}"
    truth = any(0xD800 <= ord(c) <= 0xDFFF for c in json.loads(raw)["t"])
    if truth:
        with pytest.raises(BodyError) as info:
            parse_body(raw, REC)
        assert (info.value.problem, info.value.path) == ("surrogate", "t")
    else:
        assert parse_body(raw, REC).value == json.loads(raw)
