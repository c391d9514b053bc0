"""The sweep's confidence intervals: Student-t over replications, order statistics for a
quantile."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.experiments.stats import mean_ci, quantile_ci, t_975


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042),
                                              (200, 1.96)], ids=["1", "2", "4", "30", "normal"])
def test_t_quantiles(df: int, expected: float) -> None:
    assert t_975(df) == pytest.approx(expected)


def test_t_needs_a_degree_of_freedom() -> None:
    with pytest.raises(ValueError):
        t_975(0)


@pytest.mark.parametrize(("values", "expected"), [
    ([5.0], (5.0, 5.0, 5.0)),
    ([1.0, 3.0], (2.0, 2.0 - 12.706, 2.0 + 12.706)),
    ([1.0, 2.0, 3.0], (2.0, 2.0 - 4.303 / math.sqrt(3), 2.0 + 4.303 / math.sqrt(3))),
], ids=["one", "two", "three"])
def test_mean_ci(values: list[float], expected: tuple[float, float, float]) -> None:
    got = mean_ci(values)
    assert (got.estimate, got.lo, got.hi) == pytest.approx(expected)


def test_mean_ci_ignores_missing_values() -> None:
    assert mean_ci([math.nan, 4.0]).as_list() == [4.0, 4.0, 4.0]
    assert all(math.isnan(v) for v in mean_ci([]).as_list())


def test_quantile_ci_brackets_the_estimate_and_covers() -> None:
    rng = np.random.default_rng(3)
    true_p90 = -math.log(0.1)  # Exp(1)
    hits = 0
    for _ in range(300):
        ci = quantile_ci(rng.exponential(size=400), 0.9)
        assert ci.lo <= ci.estimate <= ci.hi
        hits += ci.lo <= true_p90 <= ci.hi
    assert 0.9 <= hits / 300 <= 0.995  # nominal 95% for i.i.d. samples


def test_quantile_ci_of_a_tiny_sample_is_open_at_the_end() -> None:
    ci = quantile_ci([1.0, 2.0, 3.0], 0.99)
    assert ci.hi == 3.0 and ci.lo <= ci.estimate
