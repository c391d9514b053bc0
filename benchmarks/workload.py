"""The whole run planned up front: when each request is sent and how long it is.

A :class:`WorkloadSpec` (from the CLI or an experiment) and a seeded generator
give a list of :class:`PlannedRequest`, sorted by send time. Nothing here touches
the network, so the same seed always gives the same plan.

Trace files replay recorded traffic: CSV with a header, or JSON lines, with the
fields ``t`` (seconds from the start), ``prompt_tokens``, ``output_tokens`` and an
optional ``bucket`` label (kept in the records for per-bucket summaries)::

    t,prompt_tokens,output_tokens,bucket
    0.000,812,64,2k
    0.031,5120,128,8k
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import arrivals
from benchmarks.lengths import LengthDist, parse_lengths

__all__ = ["ARRIVAL_KINDS", "PlannedRequest", "WorkloadSpec", "load_trace", "plan_requests"]

ARRIVAL_KINDS = ("poisson", "gamma", "constant", "step", "trace")


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    index: int
    at_s: float
    """Intended send time, seconds from the start of the run."""
    prompt_tokens: int
    max_tokens: int
    """Output tokens asked for (``max_tokens``); the emulator produces exactly this many."""
    bucket: str | None = None


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    arrivals: str = "poisson"
    rate: float = 1.0
    """Requests per second (ignored by ``step`` and ``trace``)."""
    duration_s: float = 30.0
    burstiness: float = 1.0
    """``gamma`` only: squared coefficient of variation of the gaps."""
    steps: tuple[tuple[float, float], ...] = ()
    """``step`` only: (duration_s, requests per second) segments."""
    trace: Path | None = None
    prompt_tokens: LengthDist = field(default_factory=lambda: parse_lengths("fixed:100"))
    output_tokens: LengthDist = field(default_factory=lambda: parse_lengths("fixed:64"))
    max_requests: int = 100_000


def plan_requests(spec: WorkloadSpec, rng: np.random.Generator) -> list[PlannedRequest]:
    """The run's requests in send order, at most ``spec.max_requests`` of them."""
    if spec.arrivals == "trace":
        if spec.trace is None:
            raise ValueError("arrivals 'trace' needs a trace file")
        planned = [p for p in load_trace(spec.trace) if p.at_s < spec.duration_s]
        return planned[: spec.max_requests]
    if spec.arrivals == "poisson":
        times = arrivals.poisson_times(spec.rate, spec.duration_s, rng)
    elif spec.arrivals == "gamma":
        times = arrivals.gamma_times(spec.rate, spec.burstiness, spec.duration_s, rng)
    elif spec.arrivals == "constant":
        times = arrivals.constant_times(spec.rate, spec.duration_s)
    elif spec.arrivals == "step":
        times = arrivals.step_times(spec.steps, rng)
    else:
        raise ValueError(f"unknown arrival process {spec.arrivals!r} (one of {ARRIVAL_KINDS})")
    times = times[: spec.max_requests]
    prompts = spec.prompt_tokens.sample(times.size, rng)
    outputs = spec.output_tokens.sample(times.size, rng)
    rows = zip(times.tolist(), prompts.tolist(), outputs.tolist(), strict=True)
    return [PlannedRequest(i, float(t), int(p), int(o)) for i, (t, p, o) in enumerate(rows)]


def _row(raw: dict[str, Any], where: str) -> tuple[float, int, int, str | None]:
    try:
        t = float(raw["t"])
        p = int(raw["prompt_tokens"])
        o = int(raw["output_tokens"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{where}: needs t, prompt_tokens and output_tokens as numbers ({exc})"
        ) from None
    if not (math.isfinite(t) and t >= 0 and p >= 1 and o >= 1):
        raise ValueError(f"{where}: t must be >= 0 and token counts >= 1")
    bucket = raw.get("bucket")
    return t, p, o, (str(bucket) if bucket not in (None, "") else None)


def load_trace(path: Path) -> list[PlannedRequest]:
    """Read a CSV or JSONL trace (by suffix: ``.jsonl``/``.json`` or anything else as CSV)."""
    rows: list[tuple[float, int, int, str | None]] = []
    with path.open(encoding="utf-8", newline="") as fh:
        if path.suffix in (".jsonl", ".json"):
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        raise ValueError(f"{path}:{n}: not valid JSON") from None
                    if not isinstance(obj, dict):
                        raise ValueError(f"{path}:{n}: expected a JSON object")
                    rows.append(_row(obj, f"{path}:{n}"))
        else:
            for n, rec in enumerate(csv.DictReader(fh), 2):
                rows.append(_row(dict(rec), f"{path}:{n}"))
    rows.sort(key=lambda r: r[0])  # stable: ties keep file order
    return [PlannedRequest(i, t, p, o, b) for i, (t, p, o, b) in enumerate(rows)]
