"""The emulator's metric catalog, under vLLM's names so vLLM dashboards and routers work.

Series named ``vllm:*`` mean what they mean in vLLM and carry its
``model_name`` label; series named ``lpu:*`` are the emulator's own. Latency
histograms start at 100 us (an LPU emits a token every ~2 ms), not at vLLM's
coarse buckets. Gauges are refreshed from the engine when ``/metrics`` is
scraped (:meth:`EmulatorMetrics.refresh`), so the hot path only touches
counters and histograms, through children resolved once per model
(:meth:`EmulatorMetrics.child`).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lpu_emulator.lateness import TokenLateness, TokenLatenessCollector
from lpu_protocol.histograms import LATENCY_BUCKETS

__all__ = ["LATENESS_BUCKETS", "EmulatorMetrics", "ModelSeries", "make_metrics"]

LATENESS_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05,
    0.1, 0.25, 0.5, 1.0,
)
"""Seconds a token write came after its scheduled time."""


@dataclass(frozen=True, slots=True)
class ModelSeries:
    """The per-request series of one ``model_name``, resolved once."""

    ttft: Histogram
    e2e: Histogram
    queue: Histogram
    tpot: Histogram
    generation_tokens: Counter
    prompt_tokens: Counter
    lateness_first: TokenLateness
    """Per write (``lpu:token_delivery_lateness_seconds``): the write of the first token."""
    lateness_later: TokenLateness
    """Per write: every other write."""
    token_first: TokenLateness
    """Per token (:mod:`lpu_emulator.lateness`): each request's first token."""
    token_later: TokenLateness
    """Per token: every other token."""


@dataclass(frozen=True, slots=True)
class EmulatorMetrics:
    registry: CollectorRegistry
    running: Gauge  # {model_name}
    waiting: Gauge  # {model_name}
    ttft: Histogram  # {model_name}: first token written - request received
    e2e: Histogram  # {model_name}: last byte written - request received
    queue: Histogram  # {model_name}: virtual start - arrival
    tpot: Histogram  # {model_name}: (e2e - ttft) / (n - 1), n > 1
    generation_tokens: Counter  # {model_name}
    prompt_tokens: Counter  # {model_name}
    success: Counter  # {model_name, finished_reason}: length | stop
    slot_utilization: Gauge  # busy slots / slots, now
    slot_busy: Counter  # slot-seconds of ended requests (rate() / lpu:slots = utilization)
    slots: Gauge
    ready: Gauge  # 1 serving, 0 compiling an artifact
    artifact_info: Gauge  # {artifact, version, model}: 1 for the served artifact
    cancelled: Counter  # requests withdrawn by their client (queued or running)
    rejected: Counter  # {reason}
    faults: Counter  # {kind}
    lateness: TokenLatenessCollector  # {model_name, token}: per write, its earliest token
    # (token="first": the write carrying a request's first token; "later": the others)
    token_lateness: TokenLatenessCollector  # {model_name, token}: per token, every token

    def child(self, model: str) -> ModelSeries:
        return ModelSeries(
            ttft=self.ttft.labels(model),
            e2e=self.e2e.labels(model),
            queue=self.queue.labels(model),
            tpot=self.tpot.labels(model),
            generation_tokens=self.generation_tokens.labels(model),
            prompt_tokens=self.prompt_tokens.labels(model),
            lateness_first=self.lateness.series(model, "first"),
            lateness_later=self.lateness.series(model, "later"),
            token_first=self.token_lateness.series(model, "first"),
            token_later=self.token_lateness.series(model, "later"),
        )

    def refresh(
        self, *, model: str, artifact: str, version: str, slots: int, running: int,
        waiting: int, ready: bool,
    ) -> None:
        """Set the gauges from the current state (called at scrape time)."""
        for g in (self.running, self.waiting, self.artifact_info):
            g.clear()
        self.running.labels(model).set(running)
        self.waiting.labels(model).set(waiting)
        self.artifact_info.labels(artifact, version, model).set(1)
        self.slots.set(slots)
        self.slot_utilization.set(min(running, slots) / slots)
        self.ready.set(1 if ready else 0)


def make_metrics(registry: CollectorRegistry | None = None) -> EmulatorMetrics:
    """Create the catalog on ``registry`` (a fresh one when None)."""
    reg = registry if registry is not None else CollectorRegistry()
    m = ["model_name"]
    b = LATENCY_BUCKETS
    token_lateness = TokenLatenessCollector()
    reg.register(token_lateness)
    # Counted once per write by the ticker: a lock-free counter, not a prometheus Histogram.
    write_lateness = TokenLatenessCollector(
        LATENESS_BUCKETS, name="lpu:token_delivery_lateness_seconds",
        documentation="Per write: how late its earliest token was against the schedule;"
        " token=first for the write carrying the first token.")
    reg.register(write_lateness)
    return EmulatorMetrics(
        registry=reg,
        running=Gauge("vllm:num_requests_running", "Requests holding a slot.", m, registry=reg),
        waiting=Gauge(
            "vllm:num_requests_waiting", "Requests queued for a slot.", m, registry=reg
        ),
        ttft=Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token written, from request"
            " receipt.", m, buckets=b, registry=reg,
        ),
        e2e=Histogram(
            "vllm:e2e_request_latency_seconds", "Request receipt to last byte written.", m,
            buckets=b, registry=reg,
        ),
        queue=Histogram(
            "vllm:request_queue_time_seconds", "Time queued before getting a slot.", m,
            buckets=b, registry=reg,
        ),
        tpot=Histogram(
            "vllm:time_per_output_token_seconds", "Mean time between output tokens.", m,
            buckets=b, registry=reg,
        ),
        generation_tokens=Counter(
            "vllm:generation_tokens", "Output tokens written.", m, registry=reg
        ),
        prompt_tokens=Counter(
            "vllm:prompt_tokens", "Prompt tokens of admitted requests.", m, registry=reg
        ),
        success=Counter(
            "vllm:request_success", "Requests finished normally, by finish reason.",
            [*m, "finished_reason"], registry=reg,
        ),
        slot_utilization=Gauge(
            "lpu:slot_utilization", "Busy slots over slots, now.", registry=reg
        ),
        slot_busy=Counter(
            "lpu:slot_busy_seconds", "Slot-seconds used by requests that ended.",
            registry=reg,
        ),
        slots=Gauge("lpu:slots", "Slots of the served artifact.", registry=reg),
        ready=Gauge("lpu:ready", "1 when serving, 0 while compiling an artifact.", registry=reg),
        artifact_info=Gauge(
            "lpu:artifact_info", "The served artifact (value 1).",
            ["artifact", "version", "model_name"], registry=reg,
        ),
        cancelled=Counter(
            "lpu:requests_cancelled", "Requests whose client went away (queued or running).",
            registry=reg,
        ),
        rejected=Counter(
            "lpu:requests_rejected", "Requests refused, by reason.", ["reason"], registry=reg
        ),
        faults=Counter("lpu:faults_injected", "Faults injected, by kind.", ["kind"], registry=reg),
        lateness=write_lateness,
        token_lateness=token_lateness,
    )
