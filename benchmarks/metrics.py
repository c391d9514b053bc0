"""What the load generator reports, computed from the records after the run.

Definitions (docs/benchmarks.md repeats them with examples). All latencies are
measured from a request's *intended* send time.

* **TTFT**: arrival of the first chunk carrying generated text.
* **E2E**: arrival of the end of the stream (``[DONE]``).
* **ITL** (inter-token latency): the gaps between consecutive content chunks
  within one request, pooled over all requests (so long requests weigh more).
* **TPOT** (time per output token): per request ``(E2E - TTFT) / (n - 1)`` for
  ``n >= 2`` tokens; its percentiles are over requests.
* **Throughput**: completed requests (and their tokens) per second of the
  arrival window.
* **SLO attainment**: completed requests meeting every SLO bound divided by
  *all* planned requests - rejected, failed and timed-out ones count in the
  denominator.
* **Goodput**: SLO-meeting completions per second of the arrival window; and,
  over a sweep of offered rates, the highest rate at which the attainment is at
  least a given share (:func:`max_rate_meeting_slo`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.records import ClientOutcome, RequestRecord

__all__ = [
    "PERCENTILES",
    "LogHistogram",
    "Slo",
    "latency_summary",
    "max_rate_meeting_slo",
    "summarize",
    "timeseries",
]

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True, slots=True)
class Slo:
    """Bounds a completed request must meet, seconds; None means unbounded."""

    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None

    def met(self, r: RequestRecord) -> bool:
        if r.outcome != ClientOutcome.COMPLETED or r.ttft_s is None or r.e2e_s is None:
            return False
        if self.ttft_s is not None and r.ttft_s > self.ttft_s:
            return False
        if self.e2e_s is not None and r.e2e_s > self.e2e_s:
            return False
        tpot = r.tpot_s
        return self.tpot_s is None or tpot is None or tpot <= self.tpot_s


class LogHistogram:
    """Counts in geometric bins (ratio ``1 + resolution``): pooled percentiles without
    keeping every sample. Quantiles are exact to within ``resolution / 2``."""

    def __init__(self, lo: float = 1e-6, hi: float = 1e3, resolution: float = 0.01) -> None:
        self._lo = lo
        self._log_ratio = math.log1p(resolution)
        self._counts = [0] * (int(math.log(hi / lo) / self._log_ratio) + 2)
        self.count = 0
        self.total = 0.0
        self.max: float | None = None

    def add(self, v: float) -> None:
        i = 0 if v <= self._lo else int(math.log(v / self._lo) / self._log_ratio) + 1
        self._counts[min(i, len(self._counts) - 1)] += 1
        self.count += 1
        self.total += v
        self.max = v if self.max is None else max(self.max, v)

    def quantile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self._counts):
            seen += n
            if seen >= rank and n:
                if i == 0:
                    return self._lo
                return self._lo * math.exp((i - 0.5) * self._log_ratio)  # bin midpoint
        return self._lo * math.exp((len(self._counts) - 1) * self._log_ratio)

    def summary(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {f"p{p}": self.quantile(p / 100) for p in PERCENTILES}
        out["mean"] = self.total / self.count if self.count else None
        out["max"] = self.max
        out["count"] = float(self.count)
        return out


def latency_summary(values: Iterable[float | None]) -> dict[str, float | None]:
    """count, mean, p50/p90/p95/p99 and max of the non-missing values (seconds)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return {"count": 0.0, "mean": None, "max": None} | {f"p{p}": None for p in PERCENTILES}
    out: dict[str, float | None] = {"count": float(x.size), "mean": float(x.mean())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(x, p))
    out["max"] = float(x.max())
    return out


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    slo: Slo | None = None,
    gaps: LogHistogram | None = None,
) -> dict[str, Any]:
    """The run's headline numbers; ``duration_s`` is the arrival window."""
    n = len(records)
    by = {o.value: sum(1 for r in records if r.outcome == o) for o in ClientOutcome}
    done = [r for r in records if r.outcome == ClientOutcome.COMPLETED]
    tokens = sum(r.completion_tokens if r.completion_tokens is not None else r.tokens for r in done)
    late = [r.sent_s - r.intended_s for r in records if r.sent_s is not None]
    out: dict[str, Any] = {
        "requests": n,
        "outcomes": by,
        "offered_rps": n / duration_s,
        "throughput_rps": len(done) / duration_s,
        "output_tokens_per_s": tokens / duration_s,
        "ttft_s": latency_summary(r.ttft_s for r in done),
        "e2e_s": latency_summary(r.e2e_s for r in done),
        "tpot_s": latency_summary(r.tpot_s for r in done),
        "itl_s": gaps.summary() if gaps is not None else None,
        "send_lag_s": latency_summary(late),
        "retry_after_s": latency_summary(r.retry_after_s for r in records),
    }
    if slo is not None:
        met = sum(1 for r in records if slo.met(r))
        out["slo"] = {
            "ttft_s": slo.ttft_s,
            "e2e_s": slo.e2e_s,
            "tpot_s": slo.tpot_s,
            "met": met,
            "attainment": met / n if n else None,
            "goodput_rps": met / duration_s,
        }
    buckets = sorted({r.bucket for r in records if r.bucket is not None})
    if buckets:
        out["buckets"] = {
            b: {
                "requests": sum(1 for r in records if r.bucket == b),
                "rejected": sum(
                    1 for r in records if r.bucket == b and r.outcome == ClientOutcome.REJECTED
                ),
                "ttft_s": latency_summary(r.ttft_s for r in done if r.bucket == b),
            }
            for b in buckets
        }
    return out


def timeseries(records: Sequence[RequestRecord], duration_s: float) -> list[dict[str, Any]]:
    """One row per second of the run, counted by intended send second.

    ``in_flight`` is sampled at the end of the second: sent and not yet finished.
    Rows continue past the arrival window while requests are still in flight.
    """
    intended = np.asarray([r.intended_s for r in records], dtype=np.float64)
    e2e = np.asarray([np.nan if r.e2e_s is None else r.e2e_s for r in records], dtype=np.float64)
    finish = np.where(np.isnan(e2e), np.inf, intended + e2e)
    sent = np.asarray([np.inf if r.sent_s is None else r.sent_s for r in records])
    finite = finish[np.isfinite(finish)]
    seconds = math.ceil(max(float(finite.max()) if finite.size else 0.0, duration_s))
    sec = np.floor(intended).astype(np.int64)
    outcome = np.asarray([r.outcome for r in records], dtype=object)
    status = np.asarray([r.status for r in records], dtype=np.int64)
    ttft = np.asarray([np.nan if r.ttft_s is None else r.ttft_s for r in records])

    def per_second(mask: np.ndarray) -> list[int]:
        return np.bincount(sec[mask], minlength=seconds)[:seconds].tolist()  # type: ignore[no-any-return]

    every = np.ones(len(records), dtype=bool)
    offered = per_second(every)
    admitted = per_second(status == 200)
    rejected = per_second(outcome == ClientOutcome.REJECTED.value)
    completed = per_second(outcome == ClientOutcome.COMPLETED.value)
    failed = per_second(
        (outcome == ClientOutcome.FAILED.value) | (outcome == ClientOutcome.TIMED_OUT.value)
    )
    has_ttft = ~np.isnan(ttft)
    ttft_sec, ttft_val = sec[has_ttft], ttft[has_ttft]
    order = np.argsort(ttft_sec, kind="stable")
    ttft_sec, ttft_val = ttft_sec[order], ttft_val[order]
    starts = np.sort(sent)
    ends = np.sort(finish)
    rows: list[dict[str, Any]] = []
    for s in range(seconds):
        end = s + 1.0
        in_flight = int(np.searchsorted(starts, end, "right") - np.searchsorted(ends, end, "right"))
        lo, hi = np.searchsorted(ttft_sec, [s, s + 1])
        mine = ttft_val[lo:hi]
        rows.append(
            {
                "second": s,
                "offered": offered[s],
                "admitted": admitted[s],
                "rejected": rejected[s],
                "completed": completed[s],
                "failed": failed[s],
                "in_flight": in_flight,
                "ttft_p50_s": float(np.percentile(mine, 50)) if mine.size else None,
                "ttft_p99_s": float(np.percentile(mine, 99)) if mine.size else None,
            }
        )
    return rows


def max_rate_meeting_slo(points: Sequence[tuple[float, float]], share: float) -> float | None:
    """Highest offered rate in a sweep whose SLO attainment is >= ``share``, with every
    lower swept rate meeting it too (so a lucky point past the knee does not count).

    ``points`` are (offered rate, attainment) pairs; None when even the lowest fails.
    """
    best: float | None = None
    for rate, attained in sorted(points):
        if attained < share:
            break
        best = rate
    return best
