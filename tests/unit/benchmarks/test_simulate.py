"""The simulator against itself and against the exact theory.

Tolerances: queue waits are autocorrelated, so the standard error comes from
batch means (40 batches of at least 25 000 customers, long against the
relaxation time ~ 1 / (1 - sqrt(rho))**2 service times at rho = 0.98 for c = 1).
A check passes within 4.5 standard errors plus a small absolute slack; every run
is seeded, so the outcome is reproducible.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import simulate, theory

BATCHES = 40


def _within(samples: np.ndarray, expected: float, slack: float) -> None:
    batches = samples.reshape(BATCHES, -1).mean(axis=1)
    se = batches.std(ddof=1) / np.sqrt(BATCHES)
    assert abs(batches.mean() - expected) <= 4.5 * se + slack, (batches.mean(), expected, se)


@pytest.mark.parametrize("c", [1, 3, 8], ids=lambda c: f"c={c}")
def test_heap_and_vectorized_agree(c: int) -> None:
    rng = np.random.default_rng(7)
    t = simulate.poisson_arrivals(0.95 * c / 0.5, 20_000, rng)
    heap = simulate.simulate_fifo(t, 0.5, c)
    fast = simulate.fifo_starts_deterministic(t, c, 0.5)
    np.testing.assert_allclose(heap.start, fast, rtol=0, atol=1e-9)
    assert heap.admitted.all()


GRID = [(c, rho) for rho in (0.3, 0.6, 0.8, 0.9, 0.95, 0.98) for c in (1, 2, 4, 8)]


@pytest.mark.parametrize(("c", "rho"), GRID, ids=[f"c={c}-rho={r}" for c, r in GRID])
def test_theory_matches_simulation(c: int, rho: float) -> None:
    d = 1.0
    lam = c * rho / d
    n = 4_000_000 if rho >= 0.95 else 1_000_000
    rng = np.random.default_rng(1000 * c + int(rho * 100))
    t = simulate.poisson_arrivals(lam, n, rng)
    w = simulate.fifo_starts_deterministic(t, c, d) - t
    w = w[n // 20 :]  # drop the empty-start transient
    w = w[: w.size - w.size % BATCHES]
    _within(w, theory.mdc_mean_wait(lam, c, d), slack=1e-3 * d)
    _within((w <= 0).astype(np.float64), float(theory.mdc_wait_cdf(0.0, lam, c, d)[0]), 2e-3)
    for q in (0.5, 0.9, 0.99):
        x = theory.mdc_wait_percentile(q, lam, c, d)
        if x > 0:
            _within((w <= x).astype(np.float64), q, 2e-3)


@pytest.mark.parametrize("law", ["deterministic", "exponential"])
def test_loss_system_blocks_as_erlang_b(law: str) -> None:
    """A policy that refuses when every server is busy makes M/G/c/c: Erlang B, any service law."""
    rng = np.random.default_rng(3)
    c, a, n = 4, 3.0, 200_000
    t = simulate.poisson_arrivals(a, n, rng)
    s = np.ones(n) if law == "deterministic" else rng.exponential(1.0, n)
    res = simulate.simulate_fifo(t, s, c, policy=lambda arr: arr.in_system < arr.servers)
    assert np.all(res.waits == 0.0)
    b = theory.erlang_b(c, a)
    refused = (~res.admitted).astype(np.float64)[: n - n % BATCHES]
    _within(refused, b, 1e-3)


def test_mmc_waits_match_erlang_c() -> None:
    rng = np.random.default_rng(5)
    c, lam, n = 2, 1.5, 400_000
    t = simulate.poisson_arrivals(lam, n, rng)
    w = simulate.simulate_fifo(t, rng.exponential(1.0, n), c).waits
    w = w[: n - n % BATCHES]
    _within((w > 0).astype(np.float64), theory.erlang_c(c, lam), 2e-3)
    x = theory.mmc_wait_percentile(0.95, lam, c, 1.0)
    _within((w <= x).astype(np.float64), 0.95, 2e-3)


def test_policy_sees_the_exact_wait_and_can_cap_it() -> None:
    rng = np.random.default_rng(11)
    t = simulate.poisson_arrivals(1.3, 50_000, rng)  # overloaded: rho = 1.3
    seen: list[float] = []

    def cap(arr: simulate.Arrival) -> bool:
        seen.append(arr.wait_if_admitted)
        return arr.wait_if_admitted <= 2.0

    res = simulate.simulate_fifo(t, 1.0, 1, policy=cap)
    assert res.waits.max() <= 2.0
    assert 0.2 < res.refused_fraction < 0.5
    # The wait promised at arrival is the wait served.
    np.testing.assert_allclose(np.asarray(seen)[res.admitted], res.waits)


def test_rejects_unsorted_arrivals() -> None:
    with pytest.raises(ValueError):
        simulate.simulate_fifo([1.0, 0.5], 1.0, 1)
    with pytest.raises(ValueError):
        simulate.fifo_starts_deterministic([1.0, 0.5], 1, 1.0)
