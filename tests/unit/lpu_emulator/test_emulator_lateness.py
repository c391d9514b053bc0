"""Per-token lateness (lpu_emulator.lateness): every token of a write counted in its bucket.

Writes are described on a virtual clock: a job whose token j is due at
``start + prefill + j * per_token``, a write of tokens k .. m - 1 at time t; token j is late by
``t - due(j)``. Expected counts are stated by hand, and checked against a per-token loop.
"""

from __future__ import annotations

import random
from bisect import bisect_left

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from lpu_emulator.lateness import TokenLateness, TokenLatenessCollector
from lpu_emulator.metrics import make_metrics

BOUNDS = (0.001, 0.002, 0.005, 0.01)
START, PREFILL, STEP = 100.0, 0.08, 0.002


def due(j: int) -> float:
    return START + PREFILL + j * STEP


def one_by_one(writes: list[tuple[int, int, float]]) -> list[int]:
    """The counts a per-token loop gives (the definition)."""
    counts = [0] * (len(BOUNDS) + 1)
    for k, m, t in writes:
        for j in range(k, m):
            counts[bisect_left(BOUNDS, t - due(j))] += 1
    return counts


def observed(writes: list[tuple[int, int, float]]) -> TokenLateness:
    h = TokenLateness(BOUNDS)
    for k, m, t in writes:
        h.observe_run(t - due(k), STEP, m - k)
    return h


@pytest.mark.parametrize(
    ("writes", "counts"),
    [
        # One token 0.5 ms late.
        ([(0, 1, due(0) + 0.0005)], [1, 0, 0, 0, 0]),
        # Tokens 0..4 written 0.4 ms after token 4 was due: 8.4, 6.4, 4.4, 2.4, 0.4 ms late.
        ([(0, 5, due(4) + 0.0004)], [1, 0, 2, 2, 0]),
        # Tokens 10..19 written 1.5 ms after token 19: 19.5 .. 1.5 ms late, 2 ms apart.
        ([(10, 20, due(19) + 0.0015)], [0, 1, 1, 3, 5]),
        # Three writes of one stream: 0.2 ms; tokens 1..3 at 4.1, 2.1, 0.1 ms; 500 ms.
        ([(0, 1, due(0) + 0.0002), (1, 4, due(3) + 0.0001), (4, 5, due(4) + 0.5)],
         [2, 0, 2, 0, 1]),
    ],
    ids=["single", "five-at-once", "ten-late", "three-writes"],
)
def test_every_token_of_a_write_lands_in_its_bucket(
    writes: list[tuple[int, int, float]], counts: list[int]
) -> None:
    h = observed(writes)
    assert h.counts == counts == one_by_one(writes)
    assert h.count == sum(counts)
    exact_sum = sum(t - due(j) for k, m, t in writes for j in range(k, m))
    assert h.sum == pytest.approx(exact_sum, abs=1e-9)
    assert h.cumulative()[-1] == h.count


def test_a_token_exactly_on_a_bound_counts_under_it() -> None:
    h = TokenLateness((0.001, 0.002))
    h.observe_run(0.002, 0.001, 3)  # 2 ms, 1 ms, 0 ms late
    assert h.counts == [2, 1, 0]


def test_matches_the_per_token_loop_on_random_writes() -> None:
    rng = random.Random(7)
    writes = []
    for _ in range(2000):
        k = rng.randrange(0, 300)
        m = k + rng.randrange(1, 40)
        writes.append((k, m, due(m - 1) + rng.expovariate(1 / 0.004)))
    assert observed(writes).counts == one_by_one(writes)


def test_empty_write_counts_nothing() -> None:
    h = TokenLateness(BOUNDS)
    h.observe_run(0.003, STEP, 0)
    assert (h.counts, h.count, h.sum) == ([0] * 5, 0, 0.0)


def test_exported_as_a_prometheus_histogram_per_model_and_token() -> None:
    registry = CollectorRegistry()
    metrics = make_metrics(registry)
    series = metrics.child("m")
    assert series.token_first is metrics.child("m").token_first  # one series per label set
    series.token_first.observe_run(0.0003, 0.0, 1)
    series.token_later.observe_run(0.0042, 0.002, 3)  # 4.2, 2.2, 0.2 ms
    text = generate_latest(registry).decode()
    name = "lpu_emulator_token_lateness_seconds"
    for line in [
        f'{name}_bucket{{le="0.0005",model_name="m",token="first"}} 1.0',
        f'{name}_count{{model_name="m",token="first"}} 1.0',
        f'{name}_bucket{{le="0.00025",model_name="m",token="later"}} 1.0',
        f'{name}_bucket{{le="0.002",model_name="m",token="later"}} 1.0',
        f'{name}_bucket{{le="0.0025",model_name="m",token="later"}} 2.0',
        f'{name}_bucket{{le="0.0045",model_name="m",token="later"}} 3.0',
        f'{name}_bucket{{le="+Inf",model_name="m",token="later"}} 3.0',
        f'{name}_count{{model_name="m",token="later"}} 3.0',
    ]:
        assert line in text, line


def test_collector_describes_its_family() -> None:
    names = [m.name for m in TokenLatenessCollector().describe()]
    assert names == ["lpu_emulator_token_lateness_seconds"]
