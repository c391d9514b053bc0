"""A JSON request body: its top-level members with their byte spans, and splices into it.

:func:`parse_body` reads a body as one JSON object the way ``json.loads`` would (the same C
scanner does the work: each top-level value is one ``raw_decode`` call), and also records where
each top-level value sits in the raw bytes. A proxy that must change a member (the output
allowance, the model name) then rewrites just those bytes (:meth:`JSONBody.splice`) instead of
re-serialising the body: nothing else the client sent changes (key order, number spelling,
escapes), the work is a few slices, and a body that parses can always be forwarded.

It also refuses, as :class:`BodyError`, what parses in Python but must not be forwarded or
served:

* text that is not UTF-8 (RFC 8259 requires it; UTF-16 bodies are not guessed);
* ``NaN``, ``Infinity``, ``-Infinity`` (Python extensions, not JSON);
* values nested deeper than :data:`MAX_DEPTH` containers (the top object counts as 1): deep
  bodies make any recursive consumer (``json.dumps``, a backend's parser) fail;
* lone surrogates (``"\\ud800"`` without its pair): such a string cannot be encoded as UTF-8,
  so a backend that handles the text fails on it.

Both checks are cheap when nothing is wrong: a body with at most :data:`MAX_DEPTH` brackets in
a member cannot nest deeper, and a lone surrogate can only come from a ``\\uD800``-``\\uDFFF``
escape (raw surrogate bytes are not UTF-8), so one C-speed search of the raw bytes decides
whether a precise check is needed at all.

The common body (UTF-8 with no ``\\u`` escape of a surrogate or of an ASCII character, no
duplicated recorded member) is read by one scanner call, and its spans are found only when a
splice needs them (``_parse_plain``): 1.5-6 us for 0.1-4 KB bodies on this project's machines.
From ``_ORJSON_FROM`` bytes orjson reads it instead of the scanner, wherever it gives the same
value (:func:`_fast_loads`); everything else is decided the stdlib way as before.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import orjson

__all__ = ["MAX_DEPTH", "BodyError", "JSONBody", "json_string", "json_type_name", "parse_body"]

MAX_DEPTH = 64
"""Most containers on any path from the top object to a value (the top object included)."""

_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = " \t\n\r"
_WS_BYTES = (b" ", b"\t", b"\n", b"\r")
_UNSAFE_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|00[2-7])")
"""The start of a ``\\u`` escape of a surrogate half or of a printable ASCII character."""
_ESCAPABLE = frozenset('"\\/')
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUMPY_FROM = 16384
_FIND_BRACKETS_FROM = 512
_CONTAINERS = (dict, list)
_ORJSON_FROM = 1024
"""Bodies from this many bytes are read by orjson (:func:`_fast_loads`); below it its float
search costs more than it saves (callgrind: +2.3k instructions at 136 bytes, -30k at 4 KB)."""
_WIDE = 2.0 ** 63
_PATH_SEARCH_LIMIT = 100_000
"""Nodes searched for the exact path of a problem; past it the message names the member."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_ENCODE = json.JSONEncoder().encode
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
"""The decoder's C scanner (set by ``JSONDecoder.__init__``, not in the stubs): ``(value, end)``
of the JSON value at an offset; ``raw_decode`` wraps it in Python, ``decode`` adds a regex."""

Problem = Literal["json", "not_object", "depth", "surrogate"]


class BodyError(ValueError):
    """The body is not a JSON object this service accepts.

    ``problem``: ``json`` (not UTF-8 JSON), ``not_object`` (valid JSON of another type, named in
    ``detail``), ``depth`` (nested deeper than :data:`MAX_DEPTH`), ``surrogate`` (a lone
    surrogate escape). ``path``: where (``messages[0].content``), when known.
    """

    def __init__(self, problem: Problem, detail: str = "", path: str | None = None) -> None:
        super().__init__(f"{problem}: {detail}" if detail else problem)
        self.problem = problem
        self.detail = detail
        self.path = path


class JSONBody:
    """A parsed body object and, for the members asked for at parse time, where their values
    are in ``raw`` (every occurrence: duplicate keys are legal JSON; the last one wins in
    ``value``, as with ``json.loads``). Not to be changed once built.

    A plain body's spans (:func:`_parse_plain`) are found when first asked for: a proxy that
    forwards the bytes as they came, or inserts a member, never needs them, and finding them
    costs ~0.35 us a member (a small body parses in ~1.5 us).
    """

    __slots__ = ("_key_at", "_spans", "open_at", "raw", "value")

    def __init__(self, raw: bytes, value: dict[str, Any], open_at: int,
                 spans: Mapping[str, tuple[tuple[int, int], ...]] | None = None, *,
                 key_at: Mapping[str, int] | None = None) -> None:
        """``spans`` as :attr:`spans` says, or ``key_at``: where (byte offset) the one literal
        ``"key"`` of each recorded member present starts, in a plain body (``_parse_plain``)."""
        self.raw = raw
        self.value = value
        self.open_at = open_at
        """Byte offset just after the opening ``{``: where an absent member is inserted."""
        self._spans = {} if spans is None and key_at is None else spans
        self._key_at = key_at

    @property
    def spans(self) -> Mapping[str, tuple[tuple[int, int], ...]]:
        """Byte spans ``[start, end)`` of the values of the recorded members."""
        if self._spans is None:
            self._spans = _value_spans(self.raw, self._key_at or {})
        return self._spans

    def occurrences(self, key: str) -> int:
        """How many times the recorded member ``key`` occurs (more than once: duplicated)."""
        if self._key_at is not None:  # a plain body's recorded members occur once each
            return 1 if key in self._key_at else 0
        return len(self.spans.get(key, ()))

    def splice(self, updates: Mapping[str, bytes]) -> bytes:
        """``raw`` with each key's value set to the given JSON bytes: replaced at every
        occurrence when present, inserted as the first member when absent (no duplicates).

        Raises ``KeyError`` for a key present in the body whose span was not recorded.
        """
        raw, value = self.raw, self.value
        edits: list[tuple[int, int, bytes]] = []
        inserted = b""
        for key, new in updates.items():
            if key not in value:
                inserted += json_string(key) + b":" + new + b","
                continue
            where = self.spans.get(key)
            if not where:
                raise KeyError(f"the span of {key!r} was not recorded")
            edits += [(start, end, new) for start, end in where]
        if inserted:
            at = self.open_at
            if not value:
                inserted = inserted[:-1]
            if not edits:  # the common splice: the allowance added
                return raw[:at] + inserted + raw[at:]
            edits.append((at, at, inserted))
        if len(edits) == 1:
            (start, end, new), = edits
            return raw[:start] + new + raw[end:]
        edits.sort()  # by start: no two edits start at the same offset
        out: list[bytes] = []
        last = 0
        for start, end, new in edits:
            out += (raw[last:start], new)
            last = end
        out.append(raw[last:])
        return b"".join(out)


def json_string(text: str) -> bytes:
    """``text`` as a JSON string, as ``json.dumps(text).encode()`` gives it (at a third of the
    cost: ``dumps`` first sorts out its arguments)."""
    return _ENCODE(text).encode()


def parse_body(raw: bytes, record: frozenset[str] = frozenset()) -> JSONBody:
    """Parse ``raw`` as one JSON object, recording the byte spans of the members in
    ``record``; raise :class:`BodyError` for anything else (see the module docstring)."""
    plain = _parse_plain(raw, record)
    if plain is not None:
        return plain
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("json", "not UTF-8") from None
    try:
        value, open_at, members = _top_level(text)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError("depth", f"nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, IndexError) as exc:
        if isinstance(exc, _NotObject):
            raise BodyError("not_object", exc.args[0]) from None
        raise BodyError("json", str(exc)) from None
    spans = _byte_spans(raw, text, skip, members, record)
    brackets, lone = _scan(raw)
    if brackets > MAX_DEPTH:  # else nothing can nest deeper
        _check_depth(value)
    if lone is not False:
        _check_text(value, text, members)
        if lone:  # found by the scan, so in a member _check_text reads: not reached
            raise BodyError("surrogate", "a lone surrogate escape")
    return JSONBody(raw=raw, value=value, open_at=open_at + skip, spans=spans)


def _parse_plain(raw: bytes, record: frozenset[str]) -> JSONBody | None:
    """The common body at C speed, or None when only the member-wise parse can tell.

    Plain means UTF-8 without a ``\\u`` escape of a surrogate or of an ASCII character: then no
    text can hold a surrogate, and a recorded key (ASCII, see :func:`_needles`) is spelled
    literally wherever it occurs. ``json.loads``'s scanner parses it in one call; a recorded
    key whose literal ``"key"`` occurs once in the bytes is then the top-level member itself
    (a top-level key must be spelled so, and a quote inside a string is escaped), so that
    occurrence locates it. More occurrences (a duplicate, the same name in a nested object),
    more brackets than :data:`MAX_DEPTH` and anything invalid go the precise way, which also
    explains the error.
    """
    # memchr finds a backslash at ~50 bytes/ns; the escape search runs only when one exists.
    # It tries each \u (~15 ns a try): past _NUMPY_FROM bytes any \u goes the precise way,
    # whose numpy scan is cheaper on a long text full of escapes.
    if b"\\" in raw and (_UNSAFE_ESCAPE.search(raw) is not None if len(raw) < _NUMPY_FROM
                         else raw.rfind(b"\\u") >= 0):
        return None
    needles = _needles(record)
    if needles is None:
        return None
    value = _fast_loads(raw) if len(raw) >= _ORJSON_FROM else None
    if value is None:
        try:
            text = raw.decode("utf-8")
            if text[:1] == "{":
                value, end = _SCAN(text, 0)
                if end != len(text):  # trailing whitespace, or extra data: the wrapper decides
                    value = _DECODER.decode(text)
            else:
                value = _DECODER.decode(text)
        except (ValueError, RecursionError, StopIteration):
            return None
    if not isinstance(value, dict) or (len(raw) > 2 * MAX_DEPTH and _brackets_above(raw)):
        return None
    key_at: dict[str, int] = {}
    for key, needle in needles:
        if key in value:
            # Backwards: CPython's forward search for a needle of a few bytes is 3-4x slower
            # than its reverse one (3.11, 4 KB bodies).
            at = raw.rfind(needle)
            if at < 0 or raw.rfind(needle, 0, at + len(needle) - 1) >= 0:
                return None
            key_at[key] = at
    # Leading JSON whitespace is ASCII: its characters are its bytes.
    return JSONBody(raw, value, 1 if raw[:1] == b"{" else _skip_bytes(raw, 0) + 1,
                    key_at=key_at)


def _fast_loads(raw: bytes) -> Any:
    """``raw`` parsed by orjson when that gives what the stdlib scanner would, else None.

    orjson reads the bytes directly (UTF-8 checked as it goes) at a fraction of the C scanner's
    cost on long strings, and refuses all the scanner refuses; what it refuses and the scanner
    accepts (``NaN``, ``1e400``, a number over 4300 digits...) goes the stdlib way, whose
    result or error stands. Its one silent difference: an integer outside 64 bits comes back as
    a float (the stdlib keeps it an int), so a body with a float of magnitude 2**63 or more is
    read by the stdlib again (an ordinary float such as a temperature keeps orjson's value,
    the same correctly rounded double). The search goes level by level (no recursion, any
    depth orjson accepts), one set of types per container. Not an object: None (the stdlib
    way names its type).
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not dict:
        return None
    level = [value]
    while level:
        nxt: list[Any] = []
        for node in level:
            items = node.values() if type(node) is dict else node
            kinds = set(map(type, items))
            if float in kinds and any(type(v) is float and not -_WIDE < v < _WIDE
                                      for v in items):
                return None
            if dict in kinds or list in kinds:
                nxt += [v for v in items if type(v) is dict or type(v) is list]
        level = nxt
    return value


@functools.lru_cache(maxsize=16)
def _needles(record: frozenset[str]) -> tuple[tuple[str, bytes], ...] | None:
    """Each recorded key with its literal ``"key"``, or None when a key could be spelled another
    way than by an ASCII-character escape (then only the member-wise parse can find it): a
    character outside printable ASCII (its ``\\u`` escape), ``/`` (``\\/``), ``"`` or ``\\``."""
    if not all(key.isascii() and key.isprintable() and not _ESCAPABLE & set(key)
               for key in record):
        return None
    return tuple((key, f'"{key}"'.encode()) for key in sorted(record))


def _value_spans(raw: bytes, key_at: Mapping[str, int]) -> dict[str, tuple[tuple[int, int], ...]]:
    """The spans of the members whose literal keys start at the byte offsets ``key_at`` in a
    plain body."""
    spans: dict[str, tuple[tuple[int, int], ...]] = {}
    for key, at in key_at.items():
        colon = _skip_bytes(raw, at + len(key) + 2)
        # The key's one literal is the member's key (see _parse_plain), so a colon follows.
        assert raw[colon:colon + 1] == b":", (key, at)
        start = _skip_bytes(raw, colon + 1)
        spans[key] = ((start, _value_end(raw, start)),)
    return spans


def _value_end(raw: bytes, start: int) -> int:
    """Where the JSON value at byte ``start`` of a valid UTF-8 body ends, decoding only a window
    around it (growing until the value ends inside it): a member spliced late in a 4 MB body
    costs no 4 MB decode on the loop."""
    size = 64
    while True:
        window = raw[start:start + size].decode("utf-8", "ignore")  # ignored: a cut character
        whole = start + size >= len(raw)
        try:
            _, end = _SCAN(window, 0)
        except (ValueError, StopIteration):  # cut short: a string or container left open
            end = len(window)
        # A number cut by the window reads as a shorter one ("1.5e+" scans as 1): trust an end
        # only with more than two characters of the window after it.
        if whole or end + 2 < len(window):
            return start + len(window[:end].encode())
        size *= 4


def _skip_bytes(raw: bytes, i: int) -> int:
    """:func:`_skip` on bytes (JSON whitespace is ASCII)."""
    while raw[i:i + 1] in _WS_BYTES:
        i += 1
    return i


def _brackets_above(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``raw`` holds more than ``limit`` opening brackets (so a value in it may nest
    deeper than ``limit``; never in ``2 * limit`` bytes: a container takes two).
    A short body is measured without its brackets (one C call, a third cheaper than two
    ``bytes.count``, which walk byte by byte); past a few hundred bytes memchr-driven ``find``
    calls, one per bracket, stopping at ``limit``, are cheaper."""
    if len(raw) < _FIND_BRACKETS_FROM:
        return len(raw) - len(raw.translate(None, b"[{")) > limit
    seen = 0
    for bracket in b"[{":
        at = raw.find(bracket)
        while at >= 0:
            seen += 1
            if seen > limit:
                return True
            at = raw.find(bracket, at + 1)
    return False


class _NotObject(ValueError):
    """Valid JSON, but not an object (``args[0]`` names its type)."""


Member = tuple[str, int, int]
"""A top-level member: key, value start and end (character offsets in the text)."""


def _top_level(text: str) -> tuple[dict[str, Any], int, list[Member]]:
    """The object, the offset after its ``{`` and its members (character offsets)."""
    i = _WS.match(text).end()  # type: ignore[union-attr]
    if text[i:i + 1] != "{":
        other = _DECODER.decode(text)  # raises for invalid JSON
        raise _NotObject(json_type_name(other))
    open_at = i + 1
    value: dict[str, Any] = {}
    members: list[Member] = []
    i = _skip(text, open_at)
    if text[i] == "}":
        i += 1
    else:
        while True:
            if text[i] != '"':
                raise ValueError(f"expecting a property name at {i}")
            key, i = _DECODER.raw_decode(text, i)  # a JSON string: the key
            i = _skip(text, i)
            if text[i] != ":":
                raise ValueError(f"expecting ':' at {i}")
            start = _skip(text, i + 1)
            try:
                item, end = _DECODER.raw_decode(text, start)
            except RecursionError:  # deeper than the interpreter's limit, far above ours
                raise BodyError("depth", f"nested more than {MAX_DEPTH} levels deep",
                                path=_key_path(key)) from None
            value[key] = item
            members.append((key, start, end))
            i = _skip(text, end)
            if text[i] == ",":
                i = _skip(text, i + 1)
                continue
            if text[i] != "}":
                raise ValueError(f"expecting ',' or '}}' at {i}")
            i += 1
            break
    if _skip(text, i) != len(text):
        raise ValueError(f"extra data at {i}")
    return value, open_at, members


def _skip(text: str, i: int) -> int:
    """The offset of the first non-whitespace character at or after ``i``. Most offsets start
    a token or hold one space (``json.dumps``' separators): those cost no regex call."""
    here = text[i:i + 1]
    if here not in _WS_CHARS:  # ("" is in every string: the end of the text takes the regex)
        return i
    if here == " " and text[i + 1:i + 2] not in _WS_CHARS:
        return i + 1
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _byte_spans(raw: bytes, text: str, skip: int, members: list[Member],
                record: frozenset[str]) -> dict[str, tuple[tuple[int, int], ...]]:
    """Byte spans of the recorded members' values. Character offsets are byte offsets in an
    ASCII body; otherwise the text before each offset is encoded once, in order."""
    wanted = [(s, e, k) for k, s, e in members if k in record]
    out: dict[str, tuple[tuple[int, int], ...]] = {}
    if not wanted:
        return out
    ascii_body = raw.isascii()
    at_char, at_byte = 0, skip
    for start, end, key in wanted:
        if ascii_body:
            b_start, b_end = start, end
        else:
            at_byte += len(text[at_char:start].encode())
            b_start = at_byte
            b_end = at_byte = b_start + len(text[start:end].encode())
            at_char = end
        out[key] = (*out.get(key, ()), (b_start, b_end))
    return out


def _check_depth(value: dict[str, Any]) -> None:
    """Raise when any member nests deeper than :data:`MAX_DEPTH` (level by level, so the
    cost is one pass over the containers and their items, never recursive)."""
    for key, item in value.items():
        level = [item] if isinstance(item, _CONTAINERS) else []
        depth = 2
        while level:
            if depth > MAX_DEPTH:
                raise BodyError("depth", f"nested more than {MAX_DEPTH} levels deep",
                                path=_key_path(key))
            nxt: list[Any] = []
            for node in level:
                items = node.values() if isinstance(node, dict) else node
                nxt += [v for v in items if isinstance(v, _CONTAINERS)]
            level = nxt
            depth += 1


def _check_text(value: dict[str, Any], text: str, members: list[Member]) -> None:
    """Raise at the first lone surrogate in a member that holds a surrogate escape. The
    precise test is C-speed (``json.dumps`` then UTF-8 encoding, which fails on a lone
    surrogate): its cost is bounded by the member's size whatever its shape."""
    for key, start, end in members:
        if _SURROGATE_ESCAPE_TEXT.search(text, start, end) is None \
                and _SURROGATE_ESCAPE_TEXT.search(json.dumps(key)) is None:
            continue
        item = value[key]
        try:
            if isinstance(item, str):
                item.encode("utf-8")
            json.dumps(key, ensure_ascii=False).encode("utf-8")
            json.dumps(item, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BodyError("surrogate", "a lone surrogate escape (\\ud800-\\udfff without"
                            " its pair) is not valid Unicode text",
                            path=_surrogate_path(key, item) or _key_path(key)) from None


def _scan(raw: bytes) -> tuple[int, bool | None]:
    """Opening brackets in ``raw`` (an upper bound of its nesting depth) and whether it holds
    a lone surrogate escape: True, False, or None when only the precise check can tell."""
    if len(raw) < _NUMPY_FROM:
        brackets = raw.count(b"[") + raw.count(b"{")
        return brackets, None if _SURROGATE_ESCAPE.search(raw) else False
    # bytes.count and re walk byte by byte (~1 ms per 4 MB each); numpy compares 16+ at once.
    a = np.frombuffer(raw, np.uint8)
    brackets = int(np.count_nonzero(a == 0x5B)) + int(np.count_nonzero(a == 0x7B))
    # Where "\ud" / "\uD" starts (a \uXXXX escape takes 6 bytes): one mask, so a body full of
    # other escapes (\n, \") costs no more than one without any.
    esc = np.flatnonzero((a[:-5] == 0x5C) & (a[1:-4] == 0x75) & ((a[2:-3] | 0x20) == 0x64))
    if esc.size == 0:
        return brackets, False
    third = a[esc + 3] | 0x20
    surrogate = ((third >= 0x38) & (third <= 0x39)) | ((third >= 0x61) & (third <= 0x66))
    esc, third = esc[surrogate], third[surrogate]
    if esc.size == 0:
        return brackets, False
    if np.any(a[esc - 1] == 0x5C):  # an escaped backslash before it? only the parse knows
        return brackets, None
    high = esc[third <= 0x62]  # \uD8xx-\uDBxx; the rest are \uDCxx-\uDFxx
    if high.size and high[-1] + 10 > a.size:
        return brackets, True  # a high half with no room for its low half
    nxt = a[high + 9] | 0x20
    followed = (a[high + 6] == 0x5C) & (a[high + 7] == 0x75) & ((a[high + 8] | 0x20) == 0x64) \
        & (nxt >= 0x63) & (nxt <= 0x66)
    # Every high half has its low half right after it, and there are no other low halves.
    paired = bool(followed.all()) and 2 * high.size == esc.size
    return brackets, not paired


def _surrogate_path(key: str, item: Any) -> str | None:
    """The path of the first string holding a lone surrogate (bounded search)."""
    if _SURROGATE.search(key):
        return None  # the top-level key itself: the member names it
    stack: list[tuple[Any, str]] = [(item, _key_path(key))]
    seen = 0
    while stack and seen < _PATH_SEARCH_LIMIT:
        node, path = stack.pop()
        seen += 1
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return path
        elif isinstance(node, dict):
            for k, v in reversed(list(node.items())):
                if _SURROGATE.search(k):
                    return f"{path}.{k.encode('utf-8', 'backslashreplace').decode()}"
                stack.append((v, f"{path}.{k}"))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node))))
    return None


def _key_path(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode()


def json_type_name(v: object) -> str:
    """How an error message names the JSON type of ``v`` ("an array", "null", ...)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__
