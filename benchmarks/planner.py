"""Capacity planning from the exact M/D/c model (``lpu-bench plan``).

Two modes: for one artifact at a given Poisson rate and fixed output length (below), or from a
recorded trace, ``--trace FILE``: which shapes to compile, bucket boundaries, replicas and spill,
predicted by replaying the trace through the router's admission code
(:mod:`benchmarks.plan_trace`).

Model: each replica of an artifact is an M/D/c queue with ``c = slots`` and
``D = service_time(output_tokens)``; traffic is split evenly, so a replica sees
Poisson arrivals at ``rate / replicas`` (a random split keeps Poisson; round-robin
or join-shortest-queue only do better, so the plan is conservative).
TTFT = wait + prefill.

* **max utilization**: the largest ``rho`` whose TTFT quantile (default p99) is
  within the SLO - the knee of the latency curve;
* **safe utilization**: max utilization minus an explicit ``headroom``
  (absolute, e.g. 0.1 -> 10 points of utilization below the knee);
* **replicas**: the fewest that keep every replica at or below safe utilization;
* **predicted TTFT quantile** at the planned per-replica load.

Example::

    lpu-bench plan --artifact llama-3.1-8b-2k --rate 40 --p99-ttft-ms 500 --output-tokens 128
    lpu-bench plan --trace ../shared/traces/azure_llm_2023_code.csv --speedup 10
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from benchmarks import theory
from lpu_protocol.artifact import Artifact, ArtifactError, load_artifact

__all__ = ["HELP", "Plan", "configure", "execute", "max_utilization", "plan", "safe_utilization"]

HELP = ("replicas and safe utilization for a TTFT SLO, from exact M/D/c theory; with --trace,"
        " the shapes, buckets, replicas and spill for a recorded trace")
_RHO_CEILING = 0.9999


def _ttft_quantile(art: Artifact, output_tokens: int, rho: float, quantile: float) -> float:
    d = art.service_time(output_tokens)
    return theory.mdc_ttft_percentile(quantile, rho * art.slots / d, art.slots, d, art.prefill_s)


def max_utilization(
    artifact: Artifact, output_tokens: int, ttft_slo_s: float, quantile: float = 0.99
) -> float:
    """Largest utilization (to 1e-6) with TTFT ``quantile`` <= ``ttft_slo_s``; 0 if none."""
    if artifact.prefill_s >= ttft_slo_s:
        return 0.0
    if _ttft_quantile(artifact, output_tokens, _RHO_CEILING, quantile) <= ttft_slo_s:
        return _RHO_CEILING
    lo, hi = 0.0, _RHO_CEILING  # the quantile grows with rho: bisect
    while hi - lo > 1e-6:
        mid = 0.5 * (lo + hi)
        if _ttft_quantile(artifact, output_tokens, mid, quantile) <= ttft_slo_s:
            lo = mid
        else:
            hi = mid
    return lo


def safe_utilization(
    artifact: Artifact,
    output_tokens: int,
    ttft_slo_s: float,
    headroom: float = 0.1,
    quantile: float = 0.99,
) -> float:
    """Utilization target for one replica: the knee minus ``headroom``, never below 0."""
    return max(0.0, max_utilization(artifact, output_tokens, ttft_slo_s, quantile) - headroom)


@dataclass(frozen=True, slots=True)
class Plan:
    artifact: str
    rate_rps: float
    output_tokens: int
    quantile: float
    ttft_slo_s: float
    headroom: float
    service_s: float
    slots: int
    capacity_rps: float
    """Requests per second one replica completes at 100% utilization."""
    max_utilization: float
    safe_utilization: float
    replicas: int | None
    """None when no utilization meets the SLO (prefill alone exceeds it)."""
    utilization: float | None
    """Per-replica utilization at the planned load."""
    predicted_ttft_s: float | None
    """TTFT quantile at the planned load (M/D/c)."""
    mmc_ttft_s: float | None
    """The same quantile if service times were exponential (M/M/c) - the contrast."""


def plan(
    artifact: Artifact,
    rate_rps: float,
    ttft_slo_s: float,
    output_tokens: int,
    headroom: float = 0.1,
    quantile: float = 0.99,
) -> Plan:
    d = artifact.service_time(output_tokens)
    cap = artifact.slots / d
    top = max_utilization(artifact, output_tokens, ttft_slo_s, quantile)
    safe = max(0.0, top - headroom)
    replicas = utilization = predicted = mmc = None
    if safe > 0:
        replicas = max(1, math.ceil(rate_rps / (safe * cap) - 1e-9))
        lam = rate_rps / replicas
        utilization = lam / cap
        predicted = theory.mdc_ttft_percentile(quantile, lam, artifact.slots, d, artifact.prefill_s)
        mmc = theory.mmc_wait_percentile(quantile, lam, artifact.slots, d) + artifact.prefill_s
    return Plan(artifact.name, rate_rps, output_tokens, quantile, ttft_slo_s, headroom, d,
                artifact.slots, cap, top, safe, replicas, utilization, predicted, mmc)


def render(p: Plan) -> str:
    q = f"p{p.quantile * 100:g}"
    rows = [
        ("artifact", p.artifact),
        ("offered rate", f"{p.rate_rps:g} req/s"),
        ("output tokens", f"{p.output_tokens} (service {p.service_s * 1e3:.1f} ms)"),
        ("slots per replica", str(p.slots)),
        ("capacity per replica", f"{p.capacity_rps:.2f} req/s at 100%"),
        (f"{q} TTFT SLO", f"{p.ttft_slo_s * 1e3:g} ms"),
        ("max utilization (knee)", f"{p.max_utilization:.4f}"),
        ("safe utilization", f"{p.safe_utilization:.4f} (headroom {p.headroom:g})"),
    ]
    if p.replicas is None:
        rows.append(("replicas", "none: the SLO is below what the artifact can meet"))
    else:
        rows += [
            ("replicas", str(p.replicas)),
            ("planned utilization", f"{p.utilization:.4f}"),
            (f"predicted {q} TTFT", f"{(p.predicted_ttft_s or 0) * 1e3:.1f} ms (M/D/c)"),
            (f"{q} TTFT if M/M/c", f"{(p.mmc_ttft_s or 0) * 1e3:.1f} ms (contrast)"),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def configure(p: argparse.ArgumentParser) -> None:
    from benchmarks import plan_trace  # it imports this module

    p.add_argument("--artifact", help="built-in artifact name or TOML file (without --trace)")
    p.add_argument("--rate", type=float, help="offered requests per second (without --trace)")
    p.add_argument("--p99-ttft-ms", type=float, help="TTFT SLO, milliseconds (without --trace)")
    p.add_argument("--output-tokens", type=int, default=256, help="tokens per request")
    p.add_argument("--headroom", type=float, default=0.1, help="utilization kept below the knee")
    p.add_argument("--quantile", type=float, default=0.99, help="the SLO's quantile")
    plan_trace.add_arguments(p)


def execute(args: argparse.Namespace) -> int:
    if args.trace is not None:
        from benchmarks import plan_trace

        return plan_trace.execute(args)
    try:
        if args.artifact is None or args.rate is None or args.p99_ttft_ms is None:
            raise ValueError("give --artifact, --rate and --p99-ttft-ms (or --trace FILE)")
        art = load_artifact(args.artifact)
        if args.rate <= 0 or args.p99_ttft_ms <= 0 or args.output_tokens < 1:
            raise ValueError("--rate and --p99-ttft-ms must be > 0, --output-tokens >= 1")
        if not 0 <= args.headroom < 1 or not 0 < args.quantile < 1:
            raise ValueError("--headroom must be in [0, 1) and --quantile in (0, 1)")
        result = plan(art, args.rate, args.p99_ttft_ms / 1e3, args.output_tokens, args.headroom,
                      args.quantile)
    except (ArtifactError, ValueError) as exc:
        print(f"lpu-bench plan: {exc}", file=sys.stderr)
        return 2
    print(render(result))
    return 0 if result.replicas is not None else 1
