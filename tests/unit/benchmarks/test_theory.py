"""The M/D/c solution against closed forms, an independent linear solve and its own invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import theory

RHOS = [0.1, 0.3, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999]


@pytest.mark.parametrize("rho", RHOS, ids=[f"rho={r}" for r in RHOS])
def test_md1_matches_pollaczek_khinchine(rho: float) -> None:
    d = 0.03
    lam = rho / d
    assert theory.mdc_mean_wait(lam, 1, d) == pytest.approx(theory.md1_mean_wait(lam, d), rel=1e-7)
    assert theory.md1_mean_wait(lam, d) == pytest.approx(rho * d / (2 * (1 - rho)))
    assert theory.mdc_wait_cdf(0.0, lam, 1, d)[0] == pytest.approx(1 - rho, rel=1e-9)


def _embedded_chain(lam: float, c: int, size: int) -> np.ndarray:
    """Stationary law of N' = max(N - c, 0) + Poisson(lam), truncated, by a dense solve."""
    k = np.arange(size)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, size)))))
    pois = np.exp(k * math.log(lam) - lam - log_fact)
    p = np.zeros((size, size))
    for m in range(size):
        base = max(m - c, 0)
        p[m, base:] = pois[: size - base]
    a = p.T - np.eye(size)
    a[-1, :] = 1.0
    rhs = np.zeros(size)
    rhs[-1] = 1.0
    return np.linalg.solve(a, rhs)


CHAIN_CASES = [(1, 0.5), (1, 0.9), (2, 0.7), (4, 0.9), (8, 0.6), (8, 0.95)]


@pytest.mark.parametrize(("c", "rho"), CHAIN_CASES, ids=[f"c={c}-rho={r}" for c, r in CHAIN_CASES])
def test_number_in_system_matches_dense_solve(c: int, rho: float) -> None:
    lam = c * rho  # D = 1
    exact = np.cumsum(_embedded_chain(lam, c, 600))
    sol = theory.mdc(lam, c, 1.0)
    m = min(sol.cdf_n.size, 300)
    np.testing.assert_allclose(sol.cdf_n[:m], exact[:m], atol=1e-11)


CD_CASES = [(c, rho) for c in (1, 2, 4, 8, 32) for rho in (0.5, 0.9, 0.99)]


@pytest.mark.parametrize(("c", "rho"), CD_CASES, ids=[f"c={c}-rho={r}" for c, r in CD_CASES])
def test_cdf_is_a_continuous_distribution(c: int, rho: float) -> None:
    d = 0.02
    lam = c * rho / d
    sol = theory.mdc(lam, c, d)
    x = np.linspace(0.0, 40 * d / (1 - rho) / c, 4001)
    f = theory.mdc_wait_cdf(x, lam, c, d)
    assert np.all(np.isfinite(f))
    assert np.all((f >= 0.0) & (f <= 1.0))
    assert np.all(np.diff(f) >= -1e-13)
    # At multiples of D the form collapses to P(N <= (k+1)c - 1), and it is continuous there.
    for k in range(1, 6):
        at = theory.mdc_wait_cdf(np.array([k * d, k * d * (1 - 1e-12)]), lam, c, d)
        assert at[0] == pytest.approx(sol.cdf_n[(k + 1) * c - 1], abs=1e-12)
        assert at[1] == pytest.approx(at[0], abs=1e-9)


@pytest.mark.parametrize("c", [1, 2, 8, 64], ids=lambda c: f"c={c}")
@pytest.mark.parametrize("rho", [0.99, 0.995, 0.999], ids=lambda r: f"rho={r}")
def test_stable_near_saturation(c: int, rho: float) -> None:
    lam = c * rho
    sol = theory.mdc(lam, c, 1.0)
    assert np.all(np.isfinite(sol.cdf_n)) and np.all(np.diff(sol.cdf_n) >= -1e-15)
    assert sol.cdf_n[-1] == pytest.approx(1.0, abs=1e-12)
    qs = [0.5, 0.9, 0.99, 0.999]
    ps = [theory.mdc_wait_percentile(q, lam, c, 1.0) for q in qs]
    assert all(p >= 0 and math.isfinite(p) for p in ps)
    assert ps == sorted(ps)
    for q, p in zip(qs, ps, strict=True):
        if p > 0:
            assert theory.mdc_wait_cdf(p, lam, c, 1.0)[0] == pytest.approx(q, abs=1e-9)


@pytest.mark.parametrize(("c", "rho"), [(1, 0.9), (2, 0.95), (8, 0.98), (4, 0.7)],
                         ids=["c1", "c2", "c8", "c4"])
def test_cramer_lundberg_is_the_tail(c: int, rho: float) -> None:
    lam = c * rho
    const, gamma = theory.cramer_lundberg(lam, c, 1.0)
    # The adjustment equation exp(gamma D) (lam / (lam + gamma))**c = 1.
    assert gamma * 1.0 + c * math.log(lam / (lam + gamma)) == pytest.approx(0.0, abs=1e-12)
    x = np.array([math.log(const / 1e-6) / gamma, math.log(const / 1e-8) / gamma])
    tail = 1.0 - theory.mdc_wait_cdf(x, lam, c, 1.0)
    np.testing.assert_allclose(tail / (const * np.exp(-gamma * x)), 1.0, rtol=1e-3)


ERLANG_B = [(1, 1.0, 0.5), (2, 1.0, 0.2), (10, 5.0, 0.018384570336), (3, 2.0, 4 / 19)]


@pytest.mark.parametrize(("c", "a", "b"), ERLANG_B, ids=[f"B({c},{a})" for c, a, _ in ERLANG_B])
def test_erlang_b_values(c: int, a: float, b: float) -> None:
    assert theory.erlang_b(c, a) == pytest.approx(b, rel=1e-9)


def test_erlang_c_values() -> None:
    assert theory.erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: P(wait) = rho
    assert theory.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # M/M/1: P(W > t) = rho exp(-(mu - lam) t).
    q = theory.mmc_wait_percentile(0.99, 0.8, 1, 1.0)
    assert 0.8 * math.exp(-0.2 * q) == pytest.approx(0.01)
    assert theory.mmc_wait_cdf(q, 0.8, 1, 1.0) == pytest.approx(0.99)
    assert theory.mmc_wait_percentile(0.1, 0.8, 1, 1.0) == 0.0


def test_deterministic_service_waits_less_than_exponential() -> None:
    for c in (1, 4):
        lam = 0.9 * c
        assert theory.mdc_wait_percentile(0.99, lam, c, 1.0) < theory.mmc_wait_percentile(
            0.99, lam, c, 1.0
        )


def test_ttft_adds_prefill() -> None:
    w = theory.mdc_wait_percentile(0.99, 3.0, 4, 1.0)
    assert theory.mdc_ttft_percentile(0.99, 3.0, 4, 1.0, 0.08) == pytest.approx(w + 0.08)


@pytest.mark.parametrize(("lam", "c", "d"), [(1.0, 1, 1.0), (5.0, 4, 1.0), (0.0, 1, 1.0),
                                              (1.0, 0, 1.0), (1.0, 1, -1.0)],
                         ids=["rho=1", "rho>1", "lam=0", "c=0", "d<0"])
def test_rejects_unstable_or_invalid(lam: float, c: int, d: float) -> None:
    with pytest.raises(ValueError):
        theory.mdc(lam, c, d)
