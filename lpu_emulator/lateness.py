"""Per-token server lateness: time written minus time scheduled, for every token.

A write that carries tokens ``k .. m - 1`` of a job, due at ``d_j = d_k + (j - k) * step``
and written at ``t``, makes token ``j`` late by ``t - d_j``: an arithmetic sequence that falls
by ``step`` (the per-token time) from ``t - d_k``. :meth:`TokenLateness.observe_run` takes
the whole sequence in one call and keeps it as one run (its first lateness, step and length);
the runs are counted into the buckets together, with numpy, every :data:`FLUSH_RUNS` runs and
whenever the counts are read. Each token's lateness is the same float as in a loop over the
tokens (``late_first - j * step``) and lands in the bucket ``bisect_left`` would give it, so
the counts are exact; the hot path pays a few Python operations per write, however many
tokens share it.

Exported as ``lpu_emulator_token_lateness_seconds{model_name, token}`` (a Prometheus
histogram; ``token="first"`` for each request's first token, ``"later"`` for every other) by
:class:`TokenLatenessCollector`, which reads the counts at scrape time. Buckets
(:data:`TOKEN_LATENESS_BUCKETS`) are 0.5 ms apart up to 10 ms and a few ms apart up to 50 ms,
so p99 reads to within a bucket at 1 .. 50 ms.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
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

FLUSH_RUNS = 512
"""Runs kept before they are counted (one numpy pass over ~3 500 tokens at 500 streams:
well under a millisecond of the loop's time)."""

_FLUSH_AT = 3 * FLUSH_RUNS


class TokenLateness:
    """The counts of one series: ``counts[i]`` tokens with lateness in
    ``(bounds[i - 1], bounds[i]]`` (the last index: above every bound), their sum and number.
    ``sum`` and ``count`` are current after every call; ``counts`` is, once read."""

    __slots__ = ("_counts", "_edges", "_runs", "bounds", "count", "sum")

    def __init__(self, bounds: tuple[float, ...] = TOKEN_LATENESS_BUCKETS) -> None:
        self.bounds = bounds
        self._edges = np.array(bounds, dtype=np.float64)
        self._counts = [0] * (len(bounds) + 1)
        self._runs: list[float] = []
        """Runs not counted yet, flat: ``late_first, step, n`` for each (one ``extend`` a
        run, and numpy reads a flat list of numbers several times faster than tuples)."""
        self.sum = 0.0
        self.count = 0

    @property
    def counts(self) -> list[int]:
        """Tokens per bucket, every run observed so far counted."""
        if self._runs:
            self._count_runs()
        return self._counts

    def observe_run(self, late_first: float, step: float, n: int) -> None:
        """Count ``n`` tokens late by ``late_first - j * step`` for ``j = 0 .. n - 1``
        (``step >= 0``: a write's tokens are due one per-token time apart)."""
        if n <= 0:
            return
        self.count += n
        self.sum += n * late_first - step * n * (n - 1) / 2
        runs = self._runs
        runs.extend((late_first, step, n))
        if len(runs) >= _FLUSH_AT:
            self._count_runs()

    def observe(self, late: float) -> None:
        """Count one value (a run of one)."""
        self.count += 1
        self.sum += late
        runs = self._runs
        runs.extend((late, 0.0, 1))
        if len(runs) >= _FLUSH_AT:
            self._count_runs()

    def _count_runs(self) -> None:
        """Count the kept runs into the buckets: token ``j`` of a run is late by
        ``late_first - j * step`` (the same IEEE operations as Python's on floats, ``j`` an
        exact integer), and ``searchsorted(side="left")`` is ``bisect_left``."""
        runs = np.array(self._runs, dtype=np.float64).reshape(-1, 3)
        self._runs = []
        lengths = runs[:, 2].astype(np.intp)
        run_of = np.repeat(np.arange(len(runs)), lengths)
        j = np.arange(run_of.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        late = runs[run_of, 0] - j * runs[run_of, 1]
        found = np.bincount(np.searchsorted(self._edges, late, side="left"),
                            minlength=len(self._counts))
        counts = self._counts
        for i, c in enumerate(found.tolist()):
            counts[i] += c

    def cumulative(self) -> list[int]:
        """Counts at or under each bound, then the total (Prometheus' bucket values)."""
        out: list[int] = []
        total = 0
        for c in self.counts:
            total += c
            out.append(total)
        return out


_HELP = ("Per token: time written minus time scheduled; token=first for each request's first"
         " token, later for the others.")


class TokenLatenessCollector(Collector):
    """A histogram family (by default ``lpu_emulator_token_lateness_seconds``) over every
    series made by :meth:`series`, labelled ``model_name`` and ``token``; register it on the
    backend's registry. Counting takes no lock (one event loop writes)."""

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
