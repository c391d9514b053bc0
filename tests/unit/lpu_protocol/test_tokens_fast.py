"""The estimator's fast path counts exactly what the plain piece-by-piece estimate counts.

``EstimateCounter.count`` splits ASCII text with an ASCII-only pattern and remembers each piece's
cost; both are speed only. The reference here is the definition: the Unicode pattern, every
piece costed afresh, and a word's case changes counted pair by pair.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from token_corpus import SAMPLES

from lpu_protocol.tokens import _PIECE, EstimateCounter, _piece_cost, _word_cost

EST = EstimateCounter()
ASCII = st.text(st.characters(max_codepoint=127), max_size=200)
ANY = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)
# Words built to hit every case pattern: lower, upper, capitalized, camelCase, random case.
WORDS = st.text(st.sampled_from("aAbBzZ"), min_size=1, max_size=20)


def reference(text: str) -> int:
    return sum(_piece_cost(piece) for piece in _PIECE.findall(text))


def reference_ascii_word(word: str) -> int:
    n = len(word)
    changes = sum(1 for a, b in pairwise(word) if a.islower() and b.isupper())
    if n >= 4 and changes * 5 >= n:
        return math.ceil(n / 1.5)
    if n <= 6:
        return 1 + changes
    return math.ceil(n / 4) + changes


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(ASCII, ANY))
def test_fast_count_equals_the_reference(text: str) -> None:
    assert EST.count(text) == reference(text)
    assert EST.count(text) == reference(text)  # again, from the remembered costs


@settings(max_examples=300, deadline=None)
@given(word=WORDS)
def test_case_change_shortcut_equals_counting_pairs(word: str) -> None:
    assert _word_cost(word) == reference_ascii_word(word)


@pytest.mark.parametrize("name", sorted(SAMPLES), ids=sorted(SAMPLES))
def test_corpus_counts_equal_the_reference(name: str) -> None:
    assert EST.count(SAMPLES[name]) == reference(SAMPLES[name])


def test_ascii_separators_count_as_whitespace() -> None:
    # A str pattern's \s matches \x1c-\x1f: the ASCII pattern must agree.
    text = "a\x1cb\x1d c\x1e\x1f\x0b\x0cd"
    assert EST.count(text) == reference(text)
