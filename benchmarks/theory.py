"""Exact queueing theory for deterministic-service backends (M/D/c), with M/M/c for contrast.

A replica with ``c`` slots and a fixed service time ``D`` fed by Poisson arrivals of
rate ``lam`` is an M/D/c FIFO queue; the offered load is ``a = lam * D`` and the
utilization ``rho = a / c`` (every function raises ``ValueError`` unless
``0 < rho < 1``). Times are in the unit of ``D`` (seconds in this project).

Waiting-time distribution (Crommelin 1932; Franx 2001, "A simple solution for the
M/D/c waiting time distribution", Oper. Res. Lett. 29:221-229)
---------------------------------------------------------------------------------
Let ``N`` be the number in system at an arbitrary moment (by PASTA, also what an
arrival sees), ``p_n = P(N = n)``. Everyone present at ``t - D`` beyond the first
``c`` is still present at ``t``, and everyone who arrived in ``(t - D, t]`` is, so::

    N(t) = max(N(t - D) - c, 0) + A(t - D, t],      A ~ Poisson(a)

Its generating function, with the ``c - 1`` roots ``z_k`` of ``z**c = exp(a (z - 1))``
inside the unit disc (``z_k = w_k exp(rho (z_k - 1))``, ``w_k = exp(2 pi i k / c)``), is::

    P(z) = (c - a) (z - 1) / (z**c exp(a (1 - z)) - 1) * prod_k (z - z_k) / (1 - z_k)

We evaluate ``P`` on the unit circle (every value has modulus <= 1, and ``expm1``
removes the cancellation at ``z = 1``) and invert with an FFT, whose length is
chosen from the dominant pole so that the aliased tail is below 1e-15. No step
subtracts nearly equal numbers, unlike the classic alternating-sign sums (Erlang's
M/D/1 series loses every digit in float64 near saturation).

FIFO with equal service times: a tagged arrival at ``t`` has started service by
``t + x`` iff at most ``c - 1`` of the customers who arrived before it are still
present then. Those customers form the same system with arrivals stopped at ``t``,
which gives Franx's positive-sum form, for ``x = k D + u``, ``0 <= u < D``::

    P(W <= x) = sum_{i=0}^{(k+1)c-1} Poisson(i; lam (D - u)) * P(N <= (k+2)c - 1 - i)

In particular ``P(W = 0) = P(N <= c - 1)``, ``P(W <= k D) = P(N <= (k+1)c - 1)``,
and by Little's law ``E[W] = E[(N - c)^+] / lam`` (for c = 1: ``rho D / (2 (1 - rho))``).

Tail (Cramer-Lundberg): the customers served by one slot form a Lindley recursion
with Erlang(c, lam) gaps, so ``P(W > x) ~ C exp(-gamma x)`` where ``gamma > 0`` solves
``exp(gamma D) (lam / (lam + gamma))**c = 1``; with ``R = 1 + gamma / lam`` (the
pole of ``P`` outside the disc) ``C = Num(R) / ((a - c / R) R**c (R - 1))``, where
``Num`` is the numerator of ``P``.

TTFT on a deterministic backend is ``W + prefill``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = [
    "MDc",
    "cramer_lundberg",
    "erlang_b",
    "erlang_c",
    "md1_mean_wait",
    "mdc",
    "mdc_mean_wait",
    "mdc_ttft_percentile",
    "mdc_wait_cdf",
    "mdc_wait_percentile",
    "mmc_wait_cdf",
    "mmc_wait_percentile",
]

FloatArray = npt.NDArray[np.float64]
_TAIL_DIGITS = 36.0  # ln(1e-15.6): aliasing and truncation error of the inversion
_MAX_FFT = 1 << 23


def _check(lam: float, c: int, d: float) -> float:
    if not (c >= 1 and int(c) == c):
        raise ValueError(f"servers must be an integer >= 1, got {c!r}")
    if not (d > 0 and math.isfinite(d)):
        raise ValueError(f"service time must be finite and > 0, got {d!r}")
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"arrival rate must be finite and > 0, got {lam!r}")
    rho = lam * d / c
    if rho >= 1.0:
        raise ValueError(f"unstable queue: utilization rho = {rho:.6g} >= 1")
    return rho


def _inner_roots(c: int, rho: float) -> npt.NDArray[np.complex128]:
    """The c - 1 roots of z**c = exp(c rho (z - 1)) with |z| < 1, z != 1."""
    if c == 1:
        return np.zeros(0, dtype=np.complex128)
    w = np.exp(2j * np.pi * np.arange(1, c) / c)
    z = np.zeros_like(w)
    # The map z -> w exp(rho (z - 1)) sends the disc into itself with derivative
    # modulus <= rho, so iterating it is safe; Newton then polishes.
    for _ in range(60):
        z = w * np.exp(rho * (z - 1.0))
    for _ in range(50):
        g = w * np.exp(rho * (z - 1.0))
        step = (z - g) / (1.0 - rho * g)
        z = z - step
        if np.max(np.abs(step)) < 1e-15:
            break
    resid = np.abs(z - w * np.exp(rho * (z - 1.0)))
    if not np.all(resid < 1e-12) or not np.all(np.abs(z) < 1.0):
        raise ArithmeticError("M/D/c: root finding did not converge")
    return np.asarray(z, dtype=np.complex128)


def _outer_root(c: int, rho: float) -> float:
    """The real root R > 1 of c ln z = a (z - 1), the dominant pole of P(z)."""
    a = c * rho
    # f(z) = c ln z - a (z - 1) is concave with f(1) = 0 and f'(1) = c - a > 0.
    z = 1.0 + 2.0 * (1.0 - rho) / rho + 1.0  # beyond the root; Newton from the right
    for _ in range(200):
        f = c * math.log(z) - a * (z - 1.0)
        step = f / (c / z - a)
        z -= step
        if abs(step) < 1e-15 * z:
            break
    return z


@dataclass(frozen=True, slots=True)
class MDc:
    """The solved M/D/c queue: the distribution of the number in system."""

    lam: float
    servers: int
    service: float
    rho: float
    cdf_n: FloatArray
    """cdf_n[m] = P(N <= m); P(N <= m) is taken as 1 beyond the end."""
    mean_queue: float
    """E[(N - c)^+], the mean number waiting."""
    outer_root: float
    inner_roots: npt.NDArray[np.complex128]

    def p_n_le(self, m: npt.NDArray[np.int64]) -> FloatArray:
        m = np.asarray(m, dtype=np.int64)
        out = np.ones(m.shape, dtype=np.float64)
        inside = m < self.cdf_n.size
        out[m < 0] = 0.0
        ok = inside & (m >= 0)
        out[ok] = self.cdf_n[m[ok]]
        return out


@lru_cache(maxsize=256)
def mdc(lam: float, c: int, d: float) -> MDc:
    """Solve M/D/c with arrival rate ``lam``, ``c`` servers, service time ``d``."""
    rho = _check(lam, c, d)
    a = lam * d
    roots = _inner_roots(c, rho)
    big_r = _outer_root(c, rho)
    need = 4 * c + 64 + _TAIL_DIGITS / math.log(big_r)
    size = 1 << max(8, math.ceil(math.log2(need)))
    if size > _MAX_FFT:
        raise ValueError(f"M/D/c: rho = {rho:.8g} is too close to 1 for this solver")
    theta = 2.0 * np.pi * np.arange(size) / size
    zm1 = np.expm1(1j * theta)  # z - 1, exact near z = 1
    z = zm1 + 1.0
    den = np.expm1(1j * c * theta - a * zm1)  # z**c exp(a (1 - z)) - 1
    pz = np.empty(size, dtype=np.complex128)
    pz[0] = 1.0
    pz[1:] = (c - a) * zm1[1:] / den[1:]
    for zk in roots:
        pz *= (z - zk) / (1.0 - zk)
    p = np.fft.fft(pz).real / size  # p_n = (1/M) sum_j P(w^j) w^(-jn)
    p = np.clip(p, 0.0, None)
    p /= p.sum()
    cdf = np.minimum(np.cumsum(p), 1.0)
    n = np.arange(size)
    mean_queue = float(np.sum(np.clip(n - c, 0, None) * p))
    return MDc(lam, c, d, rho, cdf, mean_queue, big_r, roots)


def _poisson_pmf_table(mu: FloatArray, kmax: int) -> FloatArray:
    """pmf[j, i] = P(Poisson(mu[j]) = i) for i <= kmax, computed in logs."""
    i = np.arange(kmax + 1, dtype=np.float64)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, kmax + 1)))))
    with np.errstate(divide="ignore"):
        log_mu = np.log(mu)[:, None]
    logp = i[None, :] * log_mu - mu[:, None] - log_fact[None, :]
    logp[:, 0] = -mu  # 0 * log(0) is 0: P(Poisson(0) = 0) = 1
    return np.exp(logp)


def mdc_wait_cdf(x: npt.ArrayLike, lam: float, c: int, d: float) -> FloatArray:
    """P(W <= x) for the FIFO waiting time (before service) in M/D/c; 0 for x < 0."""
    q = mdc(lam, c, d)
    xs = np.atleast_1d(np.asarray(x, dtype=np.float64))
    out = np.zeros(xs.shape, dtype=np.float64)
    pos = xs >= 0
    k = np.floor(xs[pos] / d).astype(np.int64)
    u = xs[pos] - k * d
    res = np.empty(k.shape, dtype=np.float64)
    for kk in np.unique(k):
        sel = k == kk
        top = (int(kk) + 1) * c - 1
        if top + c >= q.cdf_n.size:  # beyond the solved range: the tail is below 1e-15
            res[sel] = 1.0
            continue
        pois = _poisson_pmf_table(lam * (d - u[sel]), top)
        i = np.arange(top + 1)
        res[sel] = pois @ q.p_n_le((int(kk) + 2) * c - 1 - i)
    out[pos] = np.clip(res, 0.0, 1.0)
    return out.reshape(np.shape(x)) if np.ndim(x) else out


def mdc_mean_wait(lam: float, c: int, d: float) -> float:
    """E[W] = E[(N - c)^+] / lam (Little's law on the waiting room)."""
    return mdc(lam, c, d).mean_queue / lam


def md1_mean_wait(lam: float, d: float) -> float:
    """Pollaczek-Khinchine for M/D/1: rho D / (2 (1 - rho))."""
    rho = _check(lam, 1, d)
    return rho * d / (2.0 * (1.0 - rho))


def mdc_wait_percentile(q: float, lam: float, c: int, d: float) -> float:
    """Smallest x with P(W <= x) >= q (0 when the chance of no wait is at least q)."""
    if not 0.0 <= q < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {q!r}")
    sol = mdc(lam, c, d)
    if sol.cdf_n[c - 1] >= q:
        return 0.0
    # P(W <= k D) = P(N <= (k+1)c - 1): find the D-interval that holds the quantile.
    idx = np.arange(c - 1, sol.cdf_n.size, c)
    k = int(np.searchsorted(sol.cdf_n[idx], q))  # first k with P(W <= k D) >= q
    if k >= idx.size:
        raise ValueError(f"quantile {q} is beyond the solved tail")
    lo, hi = (k - 1) * d, k * d
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        if mdc_wait_cdf(mid, lam, c, d)[0] >= q:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-12 * d:
            break
    return hi


def mdc_ttft_percentile(q: float, lam: float, c: int, d: float, prefill: float) -> float:
    """Percentile of TTFT = W + prefill on a deterministic backend."""
    return mdc_wait_percentile(q, lam, c, d) + prefill


def cramer_lundberg(lam: float, c: int, d: float) -> tuple[float, float]:
    """(C, gamma) with P(W > x) ~ C exp(-gamma x) as x grows."""
    sol = mdc(lam, c, d)
    a = lam * d
    big_r = sol.outer_root
    num = (c - a) * (big_r - 1.0)
    for zk in sol.inner_roots:
        num *= (big_r - zk) / (1.0 - zk)
    const = float(np.real(num)) / ((a - c / big_r) * big_r**c * (big_r - 1.0))
    gamma = lam * (big_r - 1.0)
    return const, gamma


def erlang_b(c: int, a: float) -> float:
    """Blocking probability of M/G/c/c with offered load ``a`` (insensitive to service law)."""
    if c < 0 or a < 0:
        raise ValueError("erlang_b needs c >= 0 and a >= 0")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)  # the stable recursion, no factorials
    return b


def erlang_c(c: int, a: float) -> float:
    """P(wait > 0) in M/M/c with offered load ``a = lam / mu``; requires a < c."""
    if not 0 < a < c:
        raise ValueError(f"erlang_c needs 0 < a < c, got a = {a!r}, c = {c!r}")
    b = erlang_b(c, a)
    return c * b / (c - a * (1.0 - b))


def mmc_wait_cdf(x: npt.ArrayLike, lam: float, c: int, mean_service: float) -> FloatArray:
    """P(W <= x) in M/M/c: 1 - C(c, a) exp(-(c / s - lam) x)."""
    _check(lam, c, mean_service)
    pc = erlang_c(c, lam * mean_service)
    xs = np.asarray(x, dtype=np.float64)
    rate = c / mean_service - lam
    return np.where(xs < 0, 0.0, 1.0 - pc * np.exp(-rate * np.maximum(xs, 0.0)))


def mmc_wait_percentile(q: float, lam: float, c: int, mean_service: float) -> float:
    """Percentile of the M/M/c wait with the same mean service time (the contrast curve)."""
    _check(lam, c, mean_service)
    pc = erlang_c(c, lam * mean_service)
    if q <= 1.0 - pc:
        return 0.0
    return math.log(pc / (1.0 - q)) / (c / mean_service - lam)
