"""Per-token lateness on the exported buckets for writes of every length: a usual write (a
bisection per token), a long run inside few buckets (a search per bound) and a long run over
many (a bisection per token again) all give the per-token loop's counts, and the sum is the
closed form of the run."""

from __future__ import annotations

import random
from bisect import bisect_left

import pytest

from lpu_emulator.lateness import TOKEN_LATENESS_BUCKETS, TokenLateness

STEP = 0.001786


def _by_token(runs: list[tuple[float, int]]) -> list[int]:
    counts = [0] * (len(TOKEN_LATENESS_BUCKETS) + 1)
    for late_first, n in runs:
        for j in range(n):
            counts[bisect_left(TOKEN_LATENESS_BUCKETS, late_first - j * STEP)] += 1
    return counts


@pytest.mark.parametrize(("lengths", "late_s"), [
    ((1, 16), (0.0, 0.03)),  # usual writes: up to 16 tokens, up to 30 ms late
    ((17, 400), (0.5, 5.0)),  # after a stall: hundreds of tokens inside the wide buckets
    ((17, 120), (0.0, 0.3)),  # long runs across the fine buckets
], ids=["usual", "long-few-buckets", "long-many-buckets"])
def test_every_length_counts_as_the_per_token_loop(
    lengths: tuple[int, int], late_s: tuple[float, float]
) -> None:
    rng = random.Random(11)
    runs = []
    for _ in range(500):
        n = rng.randint(*lengths)
        runs.append(((n - 1) * STEP + rng.uniform(*late_s), n))
    h = TokenLateness()
    total = 0.0
    for late_first, n in runs:
        h.observe_run(late_first, STEP, n)
        total += n * late_first - STEP * n * (n - 1) / 2
    assert h.counts == _by_token(runs)
    assert h.count == sum(n for _, n in runs)
    assert h.sum == total


def test_a_long_run_on_the_bounds_counts_each_token_under_its_bound() -> None:
    # In 1/2048 s: bounds 2, 8, 16; 20 tokens late by 16, 15, ..., -3 (binary fractions, so
    # exact): -3 .. 2 (six, 2 on the bound) in the first bucket, 3 .. 8 (six) in the second,
    # 9 .. 16 (eight) in the third, none above. Searched per bound (20 tokens, 3 buckets).
    u = 1 / 2048
    h = TokenLateness((2 * u, 8 * u, 16 * u))
    h.observe_run(16 * u, u, 20)
    assert h.counts == [6, 6, 8, 0]
    assert h.sum == sum((16 - j) * u for j in range(20))
