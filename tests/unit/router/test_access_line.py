"""The access line's text: :func:`router.access_log._line` writes exactly what
``json.dumps(ex.fields(now), separators=(",", ":"))`` writes, for every kind of field value."""

from __future__ import annotations

import itertools
import random

import pytest

from router import access_log
from router.access_log import Exchange
from router.admission import Priority
from router.outcomes import Outcome, RejectReason

_TEXTS = ["", "plain", "req_0123456789abcdef", 'q"uote', "back\\slash", "tab\there",
          "nl\nx", "del\x7f", "caf\u00e9", "\u2028sep", "emoji \U0001f600", "x" * 129,
          "/v1/chat/completions", "http://127.0.0.1:9001"]
_FLOATS = [0.0, -0.0, 1e-9, 0.0004, 0.0005, 0.0015, 0.1, 0.12345, 2.0, 12.3456, 999.9995,
           1_700_000_000.12345, 1_764_638_000.9999, 1e11 + 0.5, 1e12, 3e15, -0.0004, -12.5,
           float("inf"), float("-inf"), float("nan")]


def _random_exchange(rng: random.Random) -> tuple[Exchange, float]:
    ex = Exchange(rng.choice(_TEXTS), rng.choice(_TEXTS), started=rng.choice(_FLOATS),
                  wall_start=rng.choice(_FLOATS))
    ex.tenant = rng.choice([None, *_TEXTS])
    ex.model = rng.choice([None, *_TEXTS, "m" * 1000])
    ex.bucket = rng.choice([None, *_TEXTS])
    ex.backend = rng.choice([None, *_TEXTS])
    ex.priority = rng.choice([*Priority, *_TEXTS])
    ex.outcome = rng.choice([None, *Outcome])
    ex.reject_reason = rng.choice([None, *RejectReason])
    ex.status = rng.choice([0, 200, 429, 503])
    ex.prompt_tokens = rng.choice([None, 0, 1, 812, 10**12])
    ex.completion_tokens = rng.choice([None, 0, 16])
    ex.predicted_ttft_ms = rng.choice([None, *_FLOATS])
    ex.ttft_s = rng.choice([None, *_FLOATS])
    return ex, rng.choice(_FLOATS)


def test_every_field_kind_gives_the_encoders_text() -> None:
    """3000 random exchanges over every value kind: the same text, byte for byte."""
    rng = random.Random(11)
    for _ in range(3000):
        ex, now = _random_exchange(rng)
        assert access_log._line(ex, now) == access_log._encode(ex.fields(now)), ex


def test_milliseconds_are_written_as_rounded_then_encoded() -> None:
    """Around every third decimal below 5 s and at Unix times of this century: the text of
    ``round(v, 3)`` encoded, for ``v`` and ``-v``."""
    values = [x / 1000 + d for x in range(5000) for d in (0.0, 0.0004999, 0.0005, 0.0005001)]
    values += [1_700_000_000 + x / 997 for x in range(5000)]
    for v in values:
        assert access_log._ms3(v) == access_log._encode(round(v, 3)), v
        assert access_log._ms3(-v) == access_log._encode(round(-v, 3)), -v


def test_the_remembered_strings_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client sending a new model name per request grows the memo to its cap, no further,
    and every line stays right."""
    monkeypatch.setattr(access_log, "_quoted", {None: "null"})
    ex = Exchange("req-1", "/v1/completions", started=0.0, wall_start=0.0)
    for i in itertools.islice(itertools.count(), 3 * access_log._QUOTED_MAX):
        ex.model = f"model-{i}"
        assert access_log._line(ex, 1.0) == access_log._encode(ex.fields(1.0))
    assert len(access_log._quoted) == access_log._QUOTED_MAX
