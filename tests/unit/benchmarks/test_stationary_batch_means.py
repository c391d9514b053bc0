"""The stationary estimators of experiment 1 (issue 15) on synthetic data with known answers:
the batch-means p99 interval covers the true p99 of an AR(1) sequence and of an exactly
simulated M/D/c queue at about its nominal 95% over many seeds (where the i.i.d.
order-statistic interval does not), the warm-up rule cuts a transient and little else, and
the number in system is counted exactly. Fixed seeds throughout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import simulate, theory
from benchmarks.experiments.drive import Measured
from benchmarks.experiments.long_run import concat
from benchmarks.experiments.stationary import (
    batch_quantile_ci,
    lag1,
    mser_truncation,
    queue_lengths,
    warmup_index,
)
from benchmarks.experiments.stats import quantile_ci

Z99 = 2.3263478740408408  # the standard normal's 0.99 quantile


def _ar1(rng: np.random.Generator, n: int, phi: float, x0: float | None = None,
         runs: int = 1) -> np.ndarray:
    """``runs`` AR(1) sequences of length ``n`` (rows) with unit innovations; a stationary
    start unless ``x0`` is given."""
    sd = 1.0 / math.sqrt(1.0 - phi * phi)
    e = rng.standard_normal((n, runs))
    x = np.empty((n, runs))
    x[0] = rng.standard_normal(runs) * sd if x0 is None else x0
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x.T


def test_batch_means_covers_the_p99_of_a_correlated_sequence() -> None:
    """AR(1), phi = 0.9 (correlation time ~10 samples): the stationary marginal is
    N(0, 1 / (1 - phi^2)), so the true p99 is known."""
    rng = np.random.default_rng(20261201)
    phi, n, runs = 0.9, 20_000, 200
    true = Z99 / math.sqrt(1.0 - phi * phi)
    hits = iid_hits = 0
    lags = []
    for x in _ar1(rng, n, phi, runs=runs):
        ci = batch_quantile_ci(x, 0.99)
        assert ci.lo <= ci.estimate <= ci.hi and ci.batches == 20 and ci.batch_size == 1000
        hits += ci.lo <= true <= ci.hi
        naive = quantile_ci(x, 0.99)
        iid_hits += naive.lo <= true <= naive.hi
        lags.append(ci.lag1)
    assert 0.88 <= hits / runs <= 0.99, hits / runs
    # Treating correlated samples as independent: far too narrow.
    assert iid_hits / runs < 0.75, iid_hits / runs
    # Batches of 1000 samples against a correlation time of ~10: independent batches.
    assert abs(float(np.mean(lags))) < 0.1


@pytest.mark.parametrize(("slots", "rho", "waits"), [(4, 0.8, 50_000), (16, 0.9, 100_000)],
                         ids=["c4-rho0.8", "c16-rho0.9"])
def test_batch_means_covers_the_exact_mdc_p99(slots: int, rho: float, waits: int) -> None:
    """Exactly simulated M/D/c runs started empty, warm-up cut by the experiment's rule,
    ``waits`` counted each (about what experiment 1 counts): the interval holds the exact
    stationary p99 near its nominal 95%. Measured on 300 seeds it held it in 87-93% of runs
    at these lengths (a tail quantile's batch-means interval is a little short of nominal
    until the run holds many more tail excursions), hence the tolerance."""
    rng = np.random.default_rng([15, slots, round(rho * 100)])
    d, runs = 1.0, 200
    lam = rho * slots / d
    exact = theory.mdc_wait_percentile(0.99, lam, slots, d) + d  # TTFT = W + D (one token)
    n = int(waits + lam * 200)
    hits = 0
    for _ in range(runs):
        t = simulate.poisson_arrivals(lam, n, rng)
        start = simulate.fifo_starts_deterministic(t, slots, d)
        cut = warmup_index(t, start + d, floor_s=200 * d)
        ci = batch_quantile_ci((start - t + d)[cut:], 0.99)
        hits += ci.lo <= exact <= ci.hi
    assert 0.85 <= hits / runs <= 0.99, hits / runs


@pytest.mark.parametrize(("samples", "expected"), [
    ([], (math.nan, math.nan, math.nan, 0)),
    ([3.0], (3.0, 3.0, 3.0, 1)),
    ([1.0] * 7, (1.0, 1.0, 1.0, 1)),  # fewer than 2 batches of 5: a point interval
    ([2.0] * 400, (2.0, 2.0, 2.0, 20)),  # no variation: a zero-width interval
], ids=["empty", "one", "too-few", "constant"])
def test_batch_quantile_ci_edges(samples: list[float],
                                 expected: tuple[float, float, float, int]) -> None:
    ci = batch_quantile_ci(samples, 0.99)
    np.testing.assert_equal([ci.estimate, ci.lo, ci.hi, ci.batches], list(expected))


def test_batch_quantile_ci_needs_a_quantile_inside_0_1() -> None:
    with pytest.raises(ValueError):
        batch_quantile_ci([1.0, 2.0], 1.0)


def test_relative_half_width_is_the_larger_side() -> None:
    rng = np.random.default_rng(4)
    ci = batch_quantile_ci(rng.exponential(size=5000), 0.99)
    assert ci.relative_half_width == pytest.approx(
        max(ci.hi - ci.estimate, ci.estimate - ci.lo) / ci.estimate)


def test_lag1_of_known_sequences() -> None:
    assert lag1(np.array([1.0, -1.0] * 50)) == pytest.approx(-0.99)
    assert math.isnan(lag1(np.array([1.0, 2.0])))
    assert math.isnan(lag1(np.ones(10)))


def test_mser_cuts_a_transient_and_little_else() -> None:
    """AR(1), phi = 0.95, started 40 standard deviations high (its mean decays as
    40 sd phi^t): the cut leaves out the bulk of the transient (to below 10 sd), and what
    is left of it moves the mean of the kept samples by less than a quarter of that mean's
    standard error. Started stationary, the cut is a small share of the run."""
    rng = np.random.default_rng(7)
    phi, n, x0 = 0.95, 10_000, 40.0
    sd = 1.0 / math.sqrt(1.0 - phi * phi)
    bulk = math.ceil(math.log(10.0 / x0) / math.log(phi))  # 40 sd phi^t < 10 sd from here
    for x in _ar1(rng, n, phi, x0=x0 * sd, runs=20):
        cut = mser_truncation(x)
        left = x0 * sd * phi**cut / (1.0 - phi) / (n - cut)  # the transient's share of the mean
        se = sd * math.sqrt((1.0 + phi) / (1.0 - phi) / (n - cut))
        assert bulk <= cut <= n // 5 and left < 0.25 * se, (cut, left, se)
    cuts = [mser_truncation(x) for x in _ar1(rng, n, phi, runs=40)]
    assert float(np.median(cuts)) <= n * 0.05


def test_queue_lengths_counts_who_is_still_there() -> None:
    # Three requests of 1 s on one slot, then one after the system emptied.
    arrivals = np.array([0.0, 0.2, 0.5, 5.0])
    departures = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_array_equal(queue_lengths(arrivals, departures), [0, 1, 2, 0])
    # A request whose departure is unknown is still present for everyone after it.
    np.testing.assert_array_equal(queue_lengths(arrivals, [1.0, math.nan, 3.0, 6.0]),
                                  [0, 1, 2, 1])


def test_warmup_index_is_at_least_the_floor() -> None:
    t = np.arange(100, dtype=np.float64)
    assert warmup_index(t, t + 0.5, floor_s=30.0) == 30  # nothing queues: only the floor
    assert warmup_index(np.zeros(0), np.zeros(0), floor_s=1.0) == 0


def test_concat_puts_segments_on_one_time_axis() -> None:
    def part(times: list[float]) -> Measured:
        x = np.asarray(times)
        return Measured(intended=x, sent=x + 0.001, ttft=np.full(x.size, 0.1),
                        completed=np.ones(x.size, dtype=bool),
                        rejected=np.zeros(x.size, dtype=bool),
                        prompt_tokens=np.zeros(x.size, dtype=np.int64))
    m = concat([(0.0, part([0.0, 1.0])), (30.0, part([0.5]))])
    np.testing.assert_allclose(m.intended, [0.0, 1.0, 30.5])
    np.testing.assert_allclose(m.sent, [0.001, 1.001, 30.501])
    assert m.completed.all() and m.ttft.size == 3
