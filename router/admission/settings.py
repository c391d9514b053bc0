"""Admission settings: frozen, validated values the config layer builds.

``router.config`` parses TOML into these; the admission code only ever sees
these objects (never the environment or raw mappings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from router.admission import Priority

__all__ = [
    "AdmissionMode",
    "AdmissionSettings",
    "BucketPolicy",
    "PredictionPolicy",
    "ReplicaShape",
    "TenantPolicy",
]


class AdmissionMode(StrEnum):
    OFF = "off"
    """Admit everything the caps allow; pick the least-loaded replica."""
    TIMELINE = "timeline"
    """Exact predicted wait from per-replica slot timelines."""


class PredictionPolicy(StrEnum):
    WORST_CASE = "worst_case"
    """Reserve every request's slot for its full ``max_tokens``."""
    LEARNED = "learned"
    """Reserve for a learned quantile of observed output lengths, capped by ``max_tokens``."""


@dataclass(frozen=True, slots=True)
class ReplicaShape:
    """The compiled schedule of one backend replica (seconds)."""

    url: str
    slots: int
    prefill_s: float
    per_token_s: float

    def service_time(self, output_tokens: int) -> float:
        return self.prefill_s + (max(output_tokens, 1) - 1) * self.per_token_s


@dataclass(frozen=True, slots=True)
class BucketPolicy:
    name: str
    replicas: tuple[ReplicaShape, ...]
    ttft_slo_s: float
    e2e_slo_s: float | None = None
    target_utilization: float = 0.85
    max_queue: int | None = None
    """Admitted requests waiting for a slot, at most (None: no cap beyond the SLO)."""
    max_concurrency: int | None = None
    """Admitted requests in flight (waiting + running), at most."""
    degraded_min_tokens: int | None = None
    """Degraded mode: lowest allowance to clamp to instead of refusing (None: off)."""


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    name: str
    priority: Priority = Priority.STANDARD
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    mode: AdmissionMode = AdmissionMode.TIMELINE
    margin_s: float = 0.005
    """Added to every predicted TTFT before comparing it with the SLO."""
    prediction: PredictionPolicy = PredictionPolicy.WORST_CASE
    learned_quantile: float = 0.95
    utilization_window_s: float = 10.0
    load_poll_interval_s: float = 0.05
    on_demand_max_wait_s: float = 2.0
    """Longest extra wait granted to the ``on_demand`` service tier."""
    buckets: tuple[BucketPolicy, ...] = ()
    tenants: tuple[TenantPolicy, ...] = field(default=())
