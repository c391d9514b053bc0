"""Per-token server lateness: time written minus time scheduled, for every token.

A write that carries tokens ``k .. m - 1`` of a job, due at ``d_j = d_k + (j - k) * step``
and written at ``t``, makes token ``j`` late by ``t - d_j``: an arithmetic sequence that falls
by ``step`` (the per-token time) from ``t - d_k``. :meth:`TokenLateness.observe_run` counts
the whole sequence in one call: a bisection per token for a usual write (with the per-token
time above a bucket's width its tokens seldom share a bucket), and for a long run over few
buckets a search per bound, so a write of hundreds of tokens (after a stall) costs per
bucket, not per token.

Exported as ``lpu_emulator_token_lateness_seconds{model_name, token}`` (a Prometheus
histogram; ``token="first"`` for each request's first token, ``"later"`` for every other) by
:class:`TokenLatenessCollector`, which reads the counts at scrape time. Buckets
(:data:`TOKEN_LATENESS_BUCKETS`) are 0.5 ms apart up to 10 ms and a few ms apart up to 50 ms,
so p99 reads to within a bucket at 1 .. 50 ms.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["TOKEN_LATENESS_BUCKETS", "TokenLateness", "TokenLatenessCollector"]

TOKEN_LATENESS_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.0035, 0.004,
    0.0045, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03,
    0.035, 0.04, 0.045, 0.05, 0.06, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
"""Upper bounds (seconds, inclusive as Prometheus' ``le``); +Inf follows."""

NAME = "lpu_emulator_token_lateness_seconds"

_SHORT_RUN = 16
"""Runs of at most this many tokens are counted token by token, a bisection each (with the
per-token time above a bucket's width, tokens seldom share a bucket: a search per bound
would cost more)."""

_TOKENS_PER_BOUND = 4
"""A longer run is counted per bound when it has this many tokens per bucket it spans."""


class TokenLateness:
    """The counts of one series: ``counts[i]`` tokens with lateness in
    ``(bounds[i - 1], bounds[i]]`` (the last index: above every bound), their sum and number."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = TOKEN_LATENESS_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe_run(self, late_first: float, step: float, n: int) -> None:
        """Count ``n`` tokens late by ``late_first - j * step`` for ``j = 0 .. n - 1``
        (``step >= 0``: a write's tokens are due one per-token time apart)."""
        if n <= 0:
            return
        self.count += n
        self.sum += n * late_first - step * n * (n - 1) / 2
        bounds, counts = self.bounds, self.counts
        if n > _SHORT_RUN:
            hi = bisect_left(bounds, late_first)
            lo = bisect_left(bounds, late_first - (n - 1) * step)
            if lo == hi:
                counts[hi] += n
                return
            if (hi - lo) * _TOKENS_PER_BOUND <= n:
                # Buckets lo .. hi - 1 end below late_first: count the tokens at or under
                # each bound.
                below = 0
                for i in range(lo, hi):
                    at_or_under = n - _first_at_or_under(late_first, step, n, bounds[i])
                    counts[i] += at_or_under - below
                    below = at_or_under
                counts[hi] += n - below
                return
        for j in range(n):
            counts[bisect_left(bounds, late_first - j * step)] += 1

    def observe(self, late: float) -> None:
        """Count one value (a run of one)."""
        self.counts[bisect_left(self.bounds, late)] += 1
        self.count += 1
        self.sum += late

    def cumulative(self) -> list[int]:
        """Counts at or under each bound, then the total (Prometheus' bucket values)."""
        out: list[int] = []
        total = 0
        for c in self.counts:
            total += c
            out.append(total)
        return out


def _first_at_or_under(late_first: float, step: float, n: int, bound: float) -> int:
    """The smallest ``j`` in ``0 .. n`` with ``late_first - j * step <= bound`` (n: none);
    ``step > 0`` here. Computed with the same float expression as the lateness itself, so a
    token exactly on a bound falls in the bucket of that bound."""
    j = max(0, min(n, math.ceil((late_first - bound) / step)))
    while j > 0 and late_first - (j - 1) * step <= bound:
        j -= 1
    while j < n and late_first - j * step > bound:
        j += 1
    return j


_HELP = ("Per token: time written minus time scheduled; token=first for each request's first"
         " token, later for the others.")


class TokenLatenessCollector(Collector):
    """A histogram family (by default ``lpu_emulator_token_lateness_seconds``) over every
    series made by :meth:`series`, labelled ``model_name`` and ``token``; register it on the
    backend's registry. Counting costs a bisection and no lock (one event loop writes)."""

    def __init__(self, bounds: tuple[float, ...] = TOKEN_LATENESS_BUCKETS, *,
                 name: str = NAME, documentation: str = _HELP) -> None:
        self.bounds = bounds
        self.name = name
        self.documentation = documentation
        self._series: dict[tuple[str, str], TokenLateness] = {}

    def series(self, model: str, token: str) -> TokenLateness:
        """The counts of ``{model_name=model, token=token}`` (the same object on every call)."""
        key = (model, token)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = TokenLateness(self.bounds)
        return found

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation,
                                     labels=["model_name", "token"])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        les = [repr(b) for b in self.bounds] + ["+Inf"]
        for (model, token), s in sorted(self._series.items()):
            family.add_metric([model, token], list(zip(les, s.cumulative(), strict=True)),
                              s.sum)
        yield family
