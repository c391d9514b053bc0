"""The router's metric catalog: every series it exports, in one place.

Names follow Prometheus conventions (base units, ``_total`` counters). Label
values come from small closed sets: bucket names and backend URLs from the
config, outcomes and reasons from :mod:`router.outcomes`, priorities from
:class:`router.admission.Priority`. The registry is injected so tests use a
fresh one.

Invariant the counters keep: for every bucket,
``admitted_total == sum(finished_total over outcome)`` once in-flight is 0,
where ``outcome`` is one of ``completed``, ``failed``, ``cancelled``.

With worker processes (``server.workers`` > 1, :mod:`router.workers`) every worker writes its
series into prometheus-client's multiprocess directory (``multiprocess_dir``) and a scrape of
any worker answers for the pod (:meth:`RouterMetrics.exposition`): counters and histograms are
summed over every worker that ever ran (so the invariant holds for the pod), and each gauge
says how its workers' values combine (``multiprocess_mode``, over live workers: ``livesum`` for
counts of things held now, ``livemax`` for configured limits and for the busiest view,
``livemin`` for health and headroom). Gauges read through a function are sampled
(:mod:`router.gauge_sampler`). In a single process the modes are ignored.

Counters and histograms are :mod:`router.fast_metrics`' (the library's classes, with a
shorter update of a labelled child: the request path makes a dozen per request); so are the
gauges. In one process their values take no lock: every update runs on the loop's thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest

from lpu_protocol.histograms import LATENCY_BUCKETS
from router.fast_metrics import Counter, Gauge, Histogram
from router.gauge_sampler import GaugeSampler, sampled_gauge_class

__all__ = ["LATENCY_BUCKETS", "PREDICTION_ERROR_BUCKETS", "RouterMetrics", "SupervisorMetrics",
           "make_metrics", "make_supervisor_metrics", "pod_exposition"]

# Actual minus predicted TTFT: symmetric around zero, fine near it.
PREDICTION_ERROR_BUCKETS = (
    -1.0, -0.5, -0.25, -0.1, -0.05, -0.025, -0.01, -0.005, -0.0025, -0.001, 0.0, 0.001, 0.0025,
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)


@dataclass(frozen=True, slots=True)
class RouterMetrics:
    registry: CollectorRegistry
    # Traffic and outcomes.
    requests_received: Counter  # {route}
    requests_admitted: Counter  # {bucket, priority}
    requests_rejected: Counter  # {bucket, priority, reason}; bucket="none" before bucketing
    requests_finished: Counter  # {bucket, outcome}: completed | failed | cancelled
    in_flight: Gauge  # {bucket, backend}
    ttft_seconds: Histogram  # {bucket}
    e2e_seconds: Histogram  # {bucket}
    prompt_tokens: Counter  # {bucket}
    completion_tokens: Counter  # {bucket}: tokens relayed to clients
    clamped: Counter  # {bucket, reason}: max_tokens rewritten (bucket_cap | degraded)
    spills: Counter  # {from, to}: admitted to a larger shape than their smallest fitting bucket
    padding_tokens: Counter  # {bucket, kind}: shape tokens completed requests left unused
    # Backends.
    upstream_errors: Counter  # {bucket, backend, kind}
    request_faults: Counter  # {bucket}: requests two replicas failed (blamed on the request)
    backend_up: Gauge  # {bucket, backend}: 1 healthy, 0 ejected
    retries: Counter  # {bucket}: another replica tried before the first byte
    schedule_reports: Counter  # {result}: answers' x-lpu-schedule merged | skipped | invalid
    # Admission.
    decisions: Counter  # {bucket, priority, decision, reason}
    predicted_wait_seconds: Histogram  # {bucket}
    prediction_error_seconds: Histogram  # {bucket}: actual TTFT - predicted TTFT
    utilization: Gauge  # {bucket}: busy slot time / capacity over the window
    utilization_target: Gauge  # {bucket}
    headroom: Gauge  # {bucket}: target - utilization
    queue_depth: Gauge  # {bucket}: admitted requests not yet given a slot
    # {bucket, limit}: ttft_slo_seconds | e2e_slo_seconds | max_queue | max_concurrency
    admission_limit: Gauge
    slots: Gauge  # {bucket}: total slots over healthy replicas
    # The listener and request bodies (router.listener, router.lifecycle).
    connections_refused: Counter  # connections over server.max_connections, answered 503
    body_memory_bytes: Gauge  # completion request bodies held now (bytes)
    # The event loop's own saturation (router.loop_load); pod-wide: busy summed, lag the worst.
    loop_busy_seconds: Counter  # CPU seconds of the loop's thread
    loop_lag_seconds: Gauge  # largest wake-up lag of the last second
    event_loops: Gauge  # 1 per worker running the sampler (summed: workers in the pod)
    # The shared limits store (router.limits), with [limits] store = "redis".
    limit_store_calls: Counter  # {result}: ok | over | error
    limit_store_errors: Counter  # {kind}: timeout | connection | script
    limit_store_up: Gauge  # 1 while the store answers, 0 in back-off after an error
    # Worker processes (router.workers); set only when the process is one of several workers.
    worker_info: Gauge  # {worker}: 1 per live worker (and its pid, multiprocess mode "liveall")
    # What each replica reports it serves (router.identity; set by the pool from /load).
    backend_artifact_info: Gauge  # {bucket, backend, artifact, version, compiler, digest}: 1
    backend_shape_mismatch: Gauge  # {bucket, backend}: 1 while the reported shape differs
    backend_declared_seconds: Gauge  # {bucket, backend, timing}: prefill | per_token, reported
    backend_observed_seconds: Gauge  # {bucket, backend, timing}: median of recent requests
    drift_tolerance: Gauge  # [admission] drift_tolerance (LpuRouterArtifactDrift's bound)
    canary_state: Gauge  # {bucket}: 1 canary active, 0 rolled back (absent: no canary)
    rollout_running: Gauge  # {bucket}: 1 while a rolling swap runs (router.rollout)
    rollout_swapped: Gauge  # {bucket}: replicas the last rollout brought to its target
    multiprocess_dir: str | None = None
    """The shared directory of a worker's series; None in a single process."""
    sampler: GaugeSampler | None = None
    """Writes the function-read gauges' values (multiprocess mode only)."""

    def exposition(self) -> bytes:
        """The text a scrape of ``/metrics`` gets: this process's registry, or with workers
        the whole pod's series (this worker's sampled gauges written first)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        if self.sampler is not None:
            self.sampler.sample()
        return pod_exposition(self.multiprocess_dir)


def pod_exposition(multiprocess_dir: str) -> bytes:
    """Every worker's series of ``multiprocess_dir`` merged (a registry made per scrape, as
    prometheus-client's multiprocess mode asks)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


@dataclass(frozen=True, slots=True)
class SupervisorMetrics:
    """The series the worker supervisor itself writes (multiprocess mode)."""

    worker_restarts: Counter  # {worker}: a worker that exited unasked, started again
    workers: Gauge  # worker processes configured


def make_supervisor_metrics(workers: int, registry: CollectorRegistry | None = None
                            ) -> SupervisorMetrics:
    """The supervisor's series, every worker's restart count at 0."""
    reg = registry if registry is not None else CollectorRegistry()
    m = SupervisorMetrics(
        worker_restarts=Counter(
            "lpu_router_worker_restarts", "Worker processes started again after exiting"
            " unasked (a crash, a kill), by worker index.", ["worker"], registry=reg,
        ),
        workers=Gauge("lpu_router_workers", "Worker processes configured (server.workers).",
                      registry=reg, multiprocess_mode="livemax"),
    )
    for i in range(workers):
        m.worker_restarts.labels(str(i))
    m.workers.set(workers)
    return m


def make_metrics(registry: CollectorRegistry | None = None, *,
                 multiprocess_dir: str | None = None) -> RouterMetrics:
    """Create the catalog on ``registry`` (a fresh one when None).

    ``multiprocess_dir``: this process is one of several workers writing there (prometheus-
    client must have been imported with ``PROMETHEUS_MULTIPROC_DIR`` set to it); the gauges
    read through a function are then sampled (``sampler``)."""
    reg = registry if registry is not None else CollectorRegistry()
    p = "lpu_router_"
    sampler = GaugeSampler() if multiprocess_dir is not None else None
    # A function-read gauge: read at scrape in one process, sampled with workers.
    read: type[Gauge] = Gauge if sampler is None else sampled_gauge_class(sampler)
    return RouterMetrics(
        multiprocess_dir=multiprocess_dir,
        sampler=sampler,
        worker_info=Gauge(
            p + "worker_info", "1 per live worker process, labelled with its index (and, in the"
            " pod's /metrics, its pid).", ["worker"], registry=reg, multiprocess_mode="liveall",
        ),
        registry=reg,
        requests_received=Counter(
            p + "requests_received", "HTTP requests received, by route.", ["route"], registry=reg
        ),
        requests_admitted=Counter(
            p + "requests_admitted", "Requests admitted to a backend.", ["bucket", "priority"],
            registry=reg,
        ),
        requests_rejected=Counter(
            p + "requests_rejected", "Requests refused before reaching a backend.",
            ["bucket", "priority", "reason"], registry=reg,
        ),
        requests_finished=Counter(
            p + "requests_finished", "Admitted requests by final outcome"
            " (completed, failed, cancelled).", ["bucket", "outcome"], registry=reg,
        ),
        in_flight=read(
            p + "in_flight", "Admitted requests not yet finished.", ["bucket", "backend"],
            registry=reg, multiprocess_mode="livesum",
        ),
        ttft_seconds=Histogram(
            p + "ttft_seconds", "Time to first token of streamed requests, from request arrival.",
            ["bucket"], buckets=LATENCY_BUCKETS, registry=reg,
        ),
        e2e_seconds=Histogram(
            p + "e2e_seconds", "End-to-end latency of completed requests.", ["bucket"],
            buckets=LATENCY_BUCKETS, registry=reg,
        ),
        prompt_tokens=Counter(
            p + "prompt_tokens",
            "Prompt tokens of admitted requests (the backend's usage, else counted).", ["bucket"],
            registry=reg,
        ),
        completion_tokens=Counter(
            p + "completion_tokens", "Completion tokens relayed to clients.", ["bucket"],
            registry=reg,
        ),
        clamped=Counter(
            p + "max_tokens_clamped", "Requests whose output allowance was lowered.",
            ["bucket", "reason"], registry=reg,
        ),
        spills=Counter(
            p + "spills", "Admitted requests that spilled from their smallest fitting bucket"
            " (from) to a larger shape of the same model (to).", ["from", "to"], registry=reg,
        ),
        padding_tokens=Counter(
            p + "padding_tokens", "Tokens of the compiled shape completed requests left unused,"
            " by kind: prompt (the shape's prompt part, max_seq_len - max_output_tokens, beyond"
            " the prompt) and allowance (the rest of the shape beyond the completion).",
            ["bucket", "kind"], registry=reg,
        ),
        upstream_errors=Counter(
            p + "upstream_errors", "Failures talking to backends, by kind.",
            ["bucket", "backend", "kind"], registry=reg,
        ),
        request_faults=Counter(
            p + "request_faults", "Requests that failed on two replicas after each had the whole"
            " request: blamed on the request, not charged to either backend, not tried again.",
            ["bucket"], registry=reg,
        ),
        backend_up=Gauge(
            p + "backend_up", "1 if the backend is healthy and used, 0 if ejected (with workers:"
            " 1 only while every worker uses it).", ["bucket", "backend"], registry=reg,
            multiprocess_mode="livemin",
        ),
        retries=Counter(
            p + "retries", "Requests retried on another replica before any byte was sent.",
            ["bucket"], registry=reg,
        ),
        schedule_reports=Counter(
            p + "schedule_reports", "Backend schedules read from answers (x-lpu-schedule), by"
            " result: merged into the timeline, skipped (nothing to add), invalid (ignored).",
            ["result"], registry=reg,
        ),
        decisions=Counter(
            p + "admission_decisions", "Admission decisions.",
            ["bucket", "priority", "decision", "reason"], registry=reg,
        ),
        predicted_wait_seconds=Histogram(
            p + "predicted_wait_seconds", "Predicted queueing wait at admission.", ["bucket"],
            buckets=LATENCY_BUCKETS, registry=reg,
        ),
        prediction_error_seconds=Histogram(
            p + "prediction_error_seconds", "Actual minus predicted TTFT of admitted requests.",
            ["bucket"], buckets=PREDICTION_ERROR_BUCKETS, registry=reg,
        ),
        utilization=read(
            p + "utilization", "Busy slot time over slot capacity in the sliding window.",
            ["bucket"], registry=reg, multiprocess_mode="livemax",
        ),
        utilization_target=Gauge(
            p + "utilization_target", "Configured target utilization.", ["bucket"], registry=reg,
            multiprocess_mode="livemax",
        ),
        headroom=read(
            p + "headroom", "Target utilization minus current utilization.", ["bucket"],
            registry=reg, multiprocess_mode="livemin",
        ),
        queue_depth=read(
            p + "queue_depth", "Admitted requests waiting for a slot (predicted).", ["bucket"],
            registry=reg, multiprocess_mode="livesum",
        ),
        admission_limit=Gauge(
            p + "admission_limit", "Admission limits in force.", ["bucket", "limit"], registry=reg,
            multiprocess_mode="livemax",
        ),
        slots=Gauge(p + "slots", "Slots over healthy replicas.", ["bucket"], registry=reg,
                    multiprocess_mode="livemax"),
        connections_refused=Counter(
            p + "connections_refused", "Client connections refused over server.max_connections"
            " (answered 503 too_many_connections).", registry=reg,
        ),
        body_memory_bytes=read(
            p + "body_memory_bytes", "Bytes of completion request bodies the router holds"
            " (bounded by server.max_body_memory_bytes).", registry=reg,
            multiprocess_mode="livesum",
        ),
        loop_busy_seconds=Counter(
            p + "event_loop_busy_seconds", "CPU seconds the event loop's thread used;"
            " rate() / event_loops is the busy share per worker (1.0: saturated).", registry=reg,
        ),
        loop_lag_seconds=Gauge(
            p + "event_loop_lag_seconds", "Largest lag of the event loop's wake-ups over the"
            " last second (the wait a request arriving then had).", registry=reg,
            multiprocess_mode="livemax",
        ),
        event_loops=Gauge(
            p + "event_loops", "Event loops (worker processes) sampling their load.",
            registry=reg, multiprocess_mode="livesum",
        ),
        limit_store_calls=Counter(
            p + "limit_store_calls", "Calls to the shared limits store (one per admitted request"
            " it counts), by result: ok (charged), over (a limit refused it), error.",
            ["result"], registry=reg,
        ),
        limit_store_errors=Counter(
            p + "limit_store_errors", "Failed calls to the shared limits store, by kind"
            " (timeout, connection, script).", ["kind"], registry=reg,
        ),
        canary_state=Gauge(
            p + "canary_state", "A bucket's canary: 1 active (its share goes to the canary"
            " version), 0 rolled back (beyond its bounds: none goes to it until cleared).",
            ["bucket"], registry=reg, multiprocess_mode="livemin",
        ),
        rollout_running=Gauge(
            p + "rollout_running", "1 while a rolling swap of the bucket's artifact runs"
            " (POST /admin/buckets/{name}/rollout), else 0.", ["bucket"], registry=reg,
            multiprocess_mode="livemax",
        ),
        rollout_swapped=Gauge(
            p + "rollout_replicas_swapped", "Replicas of the bucket the last rolling swap"
            " brought to its target artifact.", ["bucket"], registry=reg,
            multiprocess_mode="livemax",
        ),
        limit_store_up=Gauge(
            p + "limit_store_up", "1 while the shared limits store answers, 0 while the router"
            " backs off after an error (pod-wide: the worst worker).", registry=reg,
            multiprocess_mode="livemin",
        ),
        backend_artifact_info=Gauge(
            p + "backend_artifact_info", "1 per replica and the artifact identity it reports on"
            " /load (a replaced identity's series is removed; with workers it reads 0).",
            ["bucket", "backend", "artifact", "version", "compiler", "digest"], registry=reg,
            multiprocess_mode="livemax",
        ),
        backend_shape_mismatch=Gauge(
            p + "backend_shape_mismatch", "1 while the replica reports a model or max_seq_len"
            " other than its bucket's, or a max_output_tokens below the bucket's cap (it is not"
            " admitted to), else 0.",
            ["bucket", "backend"], registry=reg, multiprocess_mode="livemax",
        ),
        backend_declared_seconds=Gauge(
            p + "backend_declared_seconds", "Timings the replica declares (its /load report,"
            " else the bucket's config), by timing: prefill | per_token.",
            ["bucket", "backend", "timing"], registry=reg, multiprocess_mode="livemax",
        ),
        backend_observed_seconds=Gauge(
            p + "backend_observed_seconds", "Timings the router observes on the replica's"
            " answers (median of recent requests), by timing: prefill | per_token.",
            ["bucket", "backend", "timing"], registry=reg, multiprocess_mode="livemax",
        ),
        drift_tolerance=Gauge(
            p + "drift_tolerance", "[admission] drift_tolerance: the relative gap between"
            " observed and declared timings beyond which LpuRouterArtifactDrift fires.",
            registry=reg, multiprocess_mode="livemax",
        ),
    )
