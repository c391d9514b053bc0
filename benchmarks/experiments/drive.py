"""Drive planned load at a stack and read the records back as arrays.

The load generator (:func:`benchmarks.loadgen.run_load`) is open-loop and measures every
latency from the intended send time. Here: the plans the experiments use (fixed output
length, so the service time is one number) and :class:`Measured`, the records as numpy
arrays (seconds; NaN where a request has no such figure).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from benchmarks.experiments import SweepConfig
from benchmarks.lengths import parse_lengths
from benchmarks.loadgen import LoadConfig, run_load
from benchmarks.prompts import PromptFactory
from benchmarks.records import ClientOutcome, RequestRecord
from benchmarks.workload import PlannedRequest, WorkloadSpec, plan_requests

__all__ = ["Measured", "drive", "plan"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def plan(cfg: SweepConfig, rng: np.random.Generator, *, arrivals: str = "poisson",
         rate: float = 1.0, duration_s: float = 10.0, burstiness: float = 1.0,
         steps: tuple[tuple[float, float], ...] = (), prompt_tokens: str | None = None,
         max_tokens: int | None = None) -> list[PlannedRequest]:
    """A run's requests: ``max_tokens`` (default ``cfg.output_tokens``) each, prompts
    ``fixed:cfg.prompt_tokens`` unless ``prompt_tokens`` (a :mod:`benchmarks.lengths` spec)
    says otherwise."""
    spec = WorkloadSpec(
        arrivals=arrivals, rate=rate, duration_s=duration_s, burstiness=burstiness, steps=steps,
        prompt_tokens=parse_lengths(prompt_tokens or f"fixed:{cfg.prompt_tokens}"),
        output_tokens=parse_lengths(f"fixed:{max_tokens or cfg.output_tokens}"),
    )
    return plan_requests(spec, rng)


async def drive(url: str, planned: Sequence[PlannedRequest], cfg: SweepConfig, *, seed: int,
                drain_timeout_s: float = 60.0) -> list[RequestRecord]:
    """Send ``planned`` open-loop to ``url``; one record per planned request, in order."""
    config = LoadConfig(url, cfg.model, drain_timeout_s=drain_timeout_s)
    result = await run_load(planned, config, PromptFactory(np.random.default_rng(seed)))
    return result.records


def _col(values: Sequence[float | None]) -> FloatArray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Measured:
    """A run's records as arrays, in plan order."""

    intended: FloatArray
    sent: FloatArray
    """Actual send offsets (NaN: never sent); the arrival times the server saw, nearly."""
    ttft: FloatArray
    completed: BoolArray
    rejected: BoolArray
    prompt_tokens: npt.NDArray[np.int64]

    @classmethod
    def of(cls, records: Sequence[RequestRecord]) -> Measured:
        return cls(
            intended=_col([r.intended_s for r in records]),
            sent=_col([r.sent_s for r in records]),
            ttft=_col([r.ttft_s for r in records]),
            completed=np.asarray([r.outcome == ClientOutcome.COMPLETED for r in records]),
            rejected=np.asarray([r.outcome == ClientOutcome.REJECTED for r in records]),
            prompt_tokens=np.asarray([r.prompt_tokens for r in records], dtype=np.int64),
        )

    @property
    def arrivals(self) -> FloatArray:
        """When each request reached the stack, nearly: its send offset, or its intended one
        when it was never sent (what an exact schedule of the run is computed from)."""
        return np.where(np.isnan(self.sent), self.intended, self.sent)

    @property
    def failed(self) -> int:
        """Requests neither completed nor rejected (errors, timeouts)."""
        return int((~self.completed & ~self.rejected).sum())

    def after(self, t: float) -> BoolArray:
        """Requests intended at or after ``t`` (drops a warm-up)."""
        return np.asarray(self.intended >= t)

    def slo_figures(self, slo_s: float, warmup_s: float, window_s: float) -> dict[str, float]:
        """Shares, goodput (completions with TTFT <= ``slo_s`` per second of ``window_s``)
        and admitted-request latency over the requests intended after ``warmup_s``."""
        keep = self.after(warmup_s)
        n = int(keep.sum())
        done = keep & self.completed
        ttft = self.ttft[done]
        met = int((ttft <= slo_s).sum())
        admitted = int((keep & ~self.rejected).sum())
        return {
            "requests": n, "offered_rps": n / window_s,
            "rejected_share": float((keep & self.rejected).sum()) / n if n else math.nan,
            "failed": float((keep & ~self.completed & ~self.rejected).sum()),
            "goodput_rps": met / window_s,
            "throughput_rps": float(done.sum()) / window_s,
            "violations": float(ttft.size - met),
            "violation_share": (ttft.size - met) / admitted if admitted else math.nan,
            "attainment": met / n if n else math.nan,
            "p50_admitted": float(np.percentile(ttft, 50)) if ttft.size else math.nan,
            "p99_admitted": float(np.percentile(ttft, 99)) if ttft.size else math.nan,
        }
