"""The body reader's orjson way (bodies from ``_ORJSON_FROM`` bytes) decides every body as the
stdlib way does: the same value (types, key order, -0.0, big integers), the same spans and the
same error, on generated bodies and on bodies mutated byte by byte (control characters, a BOM,
surrogate bytes, NaN, trailing data, other whitespace)."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lpu_protocol import json_body
from lpu_protocol.json_body import BodyError, JSONBody, parse_body

REC = frozenset({"model", "max_tokens"})
PAD = "p" * json_body._ORJSON_FROM  # the size the orjson way starts at

SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([2.0**63, -(2.0**63), 1e19, 9.2e18, 0.7, -0.0, 5e-324]),
    st.text(max_size=12),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
MEMBERS = st.dictionaries(st.sampled_from(["model", "max_tokens", "messages", "x", "é", ""]),
                          VALUES, max_size=5)
NOISE = st.sampled_from([
    b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b" ", b"\t", b"\n", b"\r", b"\x0c",
    b"\x00", b"\x01", b"\x7f", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\xc3", b"\xa0", b"NaN",
    b"Infinity", b"-", b"+", b".", b"e", b"E", b"0", b"1", b"9" * 25, b"\\u00e9", b"\\ud800",
    b'"model":1', b"1e400", b"true", b"\xc2\xa0"])


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down, key order and float spelling included."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return bool(a == b)


def _outcome(raw: bytes, stdlib: bool) -> tuple[str, Any, Any]:
    """What parse_body decides: the body's value, insertion point and spans, or its error."""
    with mock.patch.object(json_body, "_ORJSON_FROM", 1 << 62 if stdlib else 0):
        try:
            body: JSONBody = parse_body(raw, REC)
        except BodyError as exc:
            return "error", (exc.problem, exc.detail, exc.path), None
    return "body", body.value, (body.open_at, dict(body.spans))


def _check(raw: bytes) -> None:
    want, got = _outcome(raw, stdlib=True), _outcome(raw, stdlib=False)
    assert want[0] == got[0], raw
    if want[0] == "error":
        assert want[1:] == got[1:], raw
    else:
        assert _same(want[1], got[1]), raw
        assert want[2] == got[2], raw


def _body(members: dict[str, Any], ascii_only: bool, spaced: bool) -> bytes:
    doc = {"pad": PAD, **members}
    seps = (", ", ": ") if spaced else (",", ":")
    return json.dumps(doc, ensure_ascii=ascii_only, separators=seps).encode("utf-8",
                                                                            "surrogatepass")


@settings(max_examples=300, deadline=None)
@given(MEMBERS, st.booleans(), st.booleans())
def test_generated_bodies_read_alike(members: dict[str, Any], ascii_only: bool,
                                     spaced: bool) -> None:
    _check(_body(members, ascii_only, spaced))


@settings(max_examples=600, deadline=None)
@given(MEMBERS, st.booleans(), st.lists(st.tuples(st.floats(0, 1), NOISE, st.integers(0, 2)),
                                        min_size=1, max_size=3))
def test_mutated_bodies_read_alike(members: dict[str, Any], spaced: bool,
                                   edits: list[tuple[float, bytes, int]]) -> None:
    raw = _body(members, False, spaced)
    for where, noise, drop in edits:
        # Most of the body is the pad: aim the edits at the members after it.
        at = len(PAD) + 10 + int(where * (len(raw) - len(PAD) - 10))
        raw = raw[:at] + noise + raw[at + drop:]
    _check(raw)


@pytest.mark.parametrize("raw", [
    b'{"max_tokens": 18446744073709551616, "pad": "%s"}',  # past 64 bits: orjson's float
    b'{"max_tokens": -9223372036854775809, "pad": "%s"}',
    b'{"max_tokens": 18446744073709551615, "pad": "%s"}',  # the widest int orjson keeps
    b'{"max_tokens": 1e400, "pad": "%s"}',
    b'{"max_tokens": NaN, "pad": "%s"}',
    b'\xef\xbb\xbf{"max_tokens": 1, "pad": "%s"}',
    b' \n{"max_tokens": 1, "pad": "%s"}\r\n',
    b'{"max_tokens": 1, "pad": "%s"} x',
    b'{"max_tokens": 1, "max_tokens": 2, "pad": "%s"}',
    b'{"pad": "%s", "a": [' + b"[" * 80 + b"]" * 80 + b"]}",
], ids=["u64+1", "i64-1", "u64", "inf", "nan", "bom", "whitespace", "trailing", "duplicate",
        "deep"])
def test_edges_read_alike(raw: bytes) -> None:
    _check(raw % PAD.encode())


def test_wide_integers_stay_integers() -> None:
    raw = b'{"max_tokens": 18446744073709551616, "pad": "%s"}' % PAD.encode()
    assert parse_body(raw, REC).value["max_tokens"] == 2**64
