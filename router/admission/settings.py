"""Admission settings: frozen, validated values the config layer builds.

``router.config`` parses TOML into these; the admission code only ever sees
these objects (never the environment or raw mappings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from lpu_protocol.artifact import Timings
from router.admission import Priority

__all__ = [
    "DEFAULT_PRIORITY_RULES",
    "DRIFT_WINDOW",
    "MARGIN_CAP_SLO_FRACTION",
    "AdmissionMode",
    "AdmissionSettings",
    "BucketPolicy",
    "MarginPolicy",
    "PredictionPolicy",
    "PriorityRule",
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


class MarginPolicy(StrEnum):
    FIXED = "fixed"
    """Always ``margin_s``."""
    ADAPTIVE = "adaptive"
    """``margin_s`` raised to a quantile of the bucket's recent prediction errors
    (capped at ``MARGIN_CAP_SLO_FRACTION`` of the TTFT SLO); see
    :mod:`router.admission.margin`."""


MARGIN_CAP_SLO_FRACTION = 0.5
"""The adaptive margin never exceeds this fraction of the bucket's TTFT SLO, so a broken
measurement (a backend clock gone wrong, a stalled loop) cannot make the router refuse
everything: with the margin at the cap, requests predicted to start within the other half
of the SLO are still admitted."""


@dataclass(frozen=True, slots=True)
class ReplicaShape:
    """The compiled schedule of one backend replica (seconds); ``timings`` follows the
    two durations and holds the service-time formula."""

    url: str
    slots: int
    prefill_s: float
    per_token_s: float
    timings: Timings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timings", Timings(self.prefill_s, self.per_token_s))

    def service_time(self, output_tokens: int) -> float:
        """Seconds a request producing ``output_tokens`` (>= 1) holds its slot."""
        return self.timings.service_s(output_tokens)


@dataclass(frozen=True, slots=True)
class BucketPolicy:
    name: str
    replicas: tuple[ReplicaShape, ...]
    ttft_slo_s: float = 1.0
    e2e_slo_s: float | None = None
    target_utilization: float = 0.85
    max_queue: int | None = None
    """Admitted requests waiting for a slot, at most (None: no cap beyond the SLO)."""
    max_concurrency: int | None = None
    """Admitted requests in flight (waiting + running), at most."""
    degraded_min_tokens: int | None = None
    """Degraded mode: lowest allowance to clamp to instead of refusing (None: off)."""
    model: str = ""
    """The public model the bucket serves: requests spill only between buckets of one model
    (empty: the bucket takes no spilled work and its requests spill nowhere)."""
    max_seq_len: int = 0
    """Prompt plus output tokens of the compiled shape (0: unknown; nothing spills into it)."""
    max_output_tokens: int = 0
    """The shape's output cap: a spilled request's allowance must be within it."""
    spill: bool = True
    """May this bucket's requests spill up to a larger bucket of the same model when this one
    would refuse them for capacity (:mod:`router.admission.spill`)."""
    spill_share: float = 0.5
    """Fraction (0, 1] of this bucket's slots that work spilled in from smaller buckets may
    hold at once; the rest, at least ``1 - spill_share`` of the slots, is its own traffic's."""


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    name: str
    priority: Priority = Priority.STANDARD
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class PriorityRule:
    """How much of a bucket's room one priority may fill (the SLO reserve).

    Rules must be nested (interactive >= standard >= batch in ``share`` and in
    the utilization threshold) so that whatever refuses a higher class also
    refuses every lower one; see ``router.admission.priority``.
    """

    priority: Priority
    share: float = 1.0
    """Fraction (0, 1] of the TTFT SLO, of ``max_queue`` and of ``max_concurrency``
    this class may use. The rest is kept for higher classes."""
    utilization_factor: float | None = 1.0
    """Shed this class while utilization >= ``target_utilization * factor``;
    None ignores the utilization guard."""


DEFAULT_PRIORITY_RULES: tuple[PriorityRule, ...] = (
    PriorityRule(Priority.INTERACTIVE, share=1.0, utilization_factor=None),
    PriorityRule(Priority.STANDARD, share=1.0, utilization_factor=1.1),
    PriorityRule(Priority.BATCH, share=0.5, utilization_factor=1.0),
)
"""Interactive: full SLO, never shed on utilization. Standard: full SLO, shed a
little above the target. Batch (sheddable): half the SLO, shed at the target."""


DRIFT_WINDOW = 64
"""Recent samples a replica's observed timing is the median of (:mod:`router.drift`)."""


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    mode: AdmissionMode = AdmissionMode.TIMELINE
    margin_s: float = 0.005
    """Added to every predicted TTFT and end-to-end time before comparing it with the SLO
    (seconds); with ``margin = adaptive`` the floor of the margin in force."""
    margin: MarginPolicy = MarginPolicy.ADAPTIVE
    margin_quantile: float = 0.99
    """``adaptive``: the quantile, in (0, 1], of the recent prediction errors to cover."""
    margin_window: int = 256
    """``adaptive``: prediction errors (first tokens) the quantile is taken over, per bucket."""
    prediction: PredictionPolicy = PredictionPolicy.WORST_CASE
    learned_quantile: float = 0.95
    utilization_window_s: float = 10.0
    load_poll_interval_s: float = 0.05
    schedule_from_answers: bool = True
    """Merge the schedule a backend puts on its completion answers (``x-lpu-schedule``) into
    that replica's timeline; False: ``/load`` polls and deadline refusals only."""
    on_demand_max_wait_s: float = 2.0
    """Longest extra wait granted to the ``on_demand`` service tier."""
    buckets: tuple[BucketPolicy, ...] = ()
    tenants: tuple[TenantPolicy, ...] = field(default=())
    priorities: tuple[PriorityRule, ...] = DEFAULT_PRIORITY_RULES
    """One rule per priority; a priority without a rule gets ``PriorityRule(p)``."""
    min_retry_after_s: float = 0.05
    """Smallest ``Retry-After`` given with a refusal (seconds)."""
    learned_min_samples: int = 32
    """Completions a bucket must have seen before ``learned`` prediction is used
    (worst case until then)."""
    drift_tolerance: float = 0.05
    """Relative gap between a replica's observed and declared timings (prefill, per token)
    beyond which ``LpuRouterArtifactDrift`` fires (:mod:`router.drift`); 0.05: 5 %."""
    drift_min_samples: int = 16
    """Samples an observed timing needs before a replica's timeline schedules with it instead
    of the declared one, when they differ beyond ``drift_tolerance``
    (:mod:`router.admission.observed`)."""
