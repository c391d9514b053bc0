"""Deterministic text and seeded output lengths."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from lpu_emulator.lengths import OutputLength, draw_length
from lpu_emulator.text import VOCABULARY, TokenText, request_key, token_ids
from lpu_protocol.openai_api import parse_request


def _chat(content: str, seed: int | None = None) -> bytes:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": content}]}
    if seed is not None:
        body["seed"] = seed
    return json.dumps(body).encode()


def test_same_prompt_and_seed_give_the_same_tokens() -> None:
    a = request_key(parse_request(_chat("hello", 7), "chat"))
    b = request_key(parse_request(_chat("hello", 7), "chat"))
    assert token_ids(a, 600) == token_ids(b, 600)


@pytest.mark.parametrize(
    ("other", "kind"),
    [(_chat("hello", 8), "chat"), (_chat("hello!", 7), "chat"),
     (json.dumps({"model": "m", "prompt": "hello", "seed": 7}).encode(), "completion")],
    ids=["other-seed", "other-prompt", "other-endpoint"],
)
def test_a_different_prompt_or_seed_gives_other_tokens(other: bytes, kind: str) -> None:
    base = request_key(parse_request(_chat("hello", 7), "chat"))
    key = request_key(parse_request(other, kind))  # type: ignore[arg-type]
    assert token_ids(base, 50) != token_ids(key, 50)


def test_a_longer_answer_starts_with_the_shorter_one() -> None:
    key = request_key(parse_request(_chat("prefix"), "chat"))
    assert token_ids(key, 1000)[:300] == token_ids(key, 300)


def test_text_reads_as_words_and_json_is_precomputed() -> None:
    text = TokenText()
    ids = token_ids(b"k" * 16, 400)
    assert all(0 <= i < len(VOCABULARY) for i in ids)
    assert text.text[ids[0]].startswith(" ")
    marks = {".", ",", ";", "\n\n"}
    pairs = itertools.pairwise(ids)
    assert not any(text.text[a] in marks and text.text[b] in marks for a, b in pairs)
    assert all(json.loads(j) == t for j, t in zip(text.json, text.text, strict=True))


def test_fixed_length_is_the_allowance() -> None:
    assert draw_length(OutputLength(), 77, np.random.default_rng(0)) == (77, "length")


@pytest.mark.parametrize(
    "spec",
    [OutputLength("uniform", low=5, high=50), OutputLength("geometric", mean=20)],
    ids=["uniform", "geometric"],
)
def test_seeded_lengths_are_reproducible_and_clipped(spec: OutputLength) -> None:
    def draws(seed: int) -> list[tuple[int, str]]:
        rng = np.random.default_rng(seed)
        return [draw_length(spec, 30, rng) for _ in range(200)]

    first = draws(3)
    assert first == draws(3)
    assert first != draws(4)
    assert all(1 <= n <= 30 for n, _ in first)
    assert all((reason == "length") == (n == 30) for n, reason in first)
    assert {reason for _, reason in first} == {"length", "stop"}


def test_geometric_mean_is_about_right() -> None:
    rng = np.random.default_rng(1)
    lengths = [draw_length(OutputLength("geometric", mean=40), 10_000, rng)[0] for _ in range(4000)]
    assert np.mean(lengths) == pytest.approx(40, rel=0.1)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [(OutputLength(low=0), "output_length.low"),
     (OutputLength("uniform", low=10, high=5), "output_length.high"),
     (OutputLength("geometric", mean=0.5), "output_length.mean"),
     (OutputLength("poisson"), "output_length.kind")],  # type: ignore[arg-type]
    ids=["low", "high-below-low", "mean", "kind"],
)
def test_length_settings_are_validated(spec: OutputLength, problem: str) -> None:
    assert any(e.startswith(problem) for e in spec.errors())
