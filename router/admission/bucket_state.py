"""One bucket's admission state: its replicas' timelines, utilization, learned lengths,
admission margin, counts, and the metric series the controller keeps for it."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import Counter
from prometheus_client.samples import Sample

from router.admission import Health, Priority, always_up
from router.admission.margin import AdmissionMargin
from router.admission.prediction import OutputLengthModel
from router.admission.settings import MARGIN_CAP_SLO_FRACTION, AdmissionSettings, BucketPolicy
from router.admission.timeline import ReplicaTimeline
from router.admission.utilization import BusyWindow
from router.metrics import RouterMetrics
from router.outcomes import RejectReason

__all__ = ["BucketState"]


def _samples(counter: Counter, bucket: str) -> Iterator[Sample]:
    """The ``_total`` samples of ``counter`` for ``bucket``."""
    for metric in counter.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and s.labels.get("bucket") == bucket:
                yield s


class BucketState:
    """Mutable state of one bucket, owned by the controller (router clock, seconds)."""

    def __init__(
        self, policy: BucketPolicy, settings: AdmissionSettings, metrics: RouterMetrics | None,
        now: float, health: Health = always_up, *, clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` (the controller's) lets a scrape refresh the utilization figure."""
        self.policy = policy
        self._clock = clock
        self.replicas = [ReplicaTimeline(shape, health(policy.name, shape.url))
                         for shape in policy.replicas]
        self.by_url = {rep.url: rep for rep in self.replicas}
        self.window_s = settings.utilization_window_s
        self.windows = {rep.url: BusyWindow(self.window_s) for rep in self.replicas}
        self.lengths = OutputLengthModel(
            settings.prediction, settings.learned_quantile, settings.learned_min_samples
        )
        self.margin = AdmissionMargin(
            settings.margin, settings.margin_s, quantile=settings.margin_quantile,
            window=settings.margin_window, cap_s=MARGIN_CAP_SLO_FRACTION * policy.ttft_slo_s,
        )
        # Utilization is a guard over a window of seconds: recomputing it a few
        # hundred times per window is plenty and keeps decisions cheap.
        self._refresh_s = self.window_s / 200
        self._util = 0.0
        self._util_until = float("-inf")
        self.utilization_at = now
        """When the cached utilization figure was measured (router clock)."""
        self.decided_at = now
        """When the decision being made was asked (router clock): what the rule's
        ``next_*_exit_s`` count from. The controller sets it before each decision."""
        # Bound once: the rule's Inputs take them at every decision.
        self.next_queue_exit_s: Callable[[int], float | None] = self._next_queue_exit
        self.next_slot_exit_s: Callable[[int], float | None] = self._next_slot_exit
        self.spilled_in_flight = 0
        """Requests spilled in from smaller buckets whose ticket has not ended (the spill
        rule's ``share_full`` check, :mod:`router.admission.spill`)."""
        self._metrics = metrics
        self._decisions: dict[tuple[Priority, RejectReason | bool], Counter] = {}
        """Counter children by (priority, reason), or (priority, degraded) for admissions."""
        if metrics is not None:
            name = policy.name
            limits = {"ttft_slo_seconds": policy.ttft_slo_s, "e2e_slo_seconds": policy.e2e_slo_s,
                      "max_queue": policy.max_queue, "max_concurrency": policy.max_concurrency}
            for limit, value in limits.items():
                if value is not None:
                    metrics.admission_limit.labels(name, limit).set(value)
            metrics.utilization_target.labels(name).set(policy.target_utilization)
            self._margin_gauge = metrics.admission_limit.labels(name, "margin_seconds")
            self._margin_gauge.set(self.margin.value)
            self._wait_hist = metrics.predicted_wait_seconds.labels(name)
            self._error_hist = metrics.prediction_error_seconds.labels(name)
            # Read at each scrape, not set on the request path: the queue changes at every
            # decision and completion, the utilization at every refresh, a scrape comes
            # every few seconds.
            metrics.queue_depth.labels(name).set_function(self.queued)
            metrics.utilization.labels(name).set_function(self._cached_utilization)
            metrics.headroom.labels(name).set_function(self._cached_headroom)

    def utilization(self, now: float) -> float:
        """Busy slot time over capacity in the window, over healthy replicas (cached briefly)."""
        if now < self._util_until:
            return self._util
        w = self.window_s
        lo = now - w
        busy = capacity = 0.0
        for rep in self.replicas:
            if not rep.healthy:
                continue
            win = self.windows[rep.url]
            slots = rep.shape.slots
            own = rep.running_busy(lo, now, win.finished_busy(now))
            reported = win.reported_busy(now)
            busy += own if reported is None else max(own, reported * slots)
            capacity += slots * w
        self._util = min(1.0, busy / capacity) if capacity > 0 else 0.0
        self.utilization_at = now
        self._util_until = now + self._refresh_s
        return self._util

    def _cached_utilization(self) -> float:
        """The gauge's value at a scrape: the figure as a decision would read it now.

        Decisions read it only while a queue forms (the controller), so at light load the
        scrape is what keeps the gauge current."""
        return self._util if self._clock is None else self.utilization(self._clock())

    def _cached_headroom(self) -> float:
        return self.policy.target_utilization - self._cached_utilization()

    def queued(self) -> int:
        """Own reservations waiting for a slot over the bucket (as of each replica's last
        event: a scrape does not move the timelines)."""
        return sum(rep.queued for rep in self.replicas)

    def next_exit(self, now: float, k: int, *, queue: bool) -> float | None:
        """Seconds until the ``k``-th (>= 1, earliest first) queued request starts
        (``queue``) or in-flight one ends, over the bucket; None when fewer than ``k``."""
        times = heapq.nsmallest(k, itertools.chain.from_iterable(
            rep.queued_starts() if queue else rep.ends() for rep in self.replicas))
        return max(0.0, times[-1] - now) if len(times) == k else None

    def _next_queue_exit(self, k: int) -> float | None:
        return self.next_exit(self.decided_at, k, queue=True)

    def _next_slot_exit(self, k: int) -> float | None:
        return self.next_exit(self.decided_at, k, queue=False)

    def record_admitted(self, priority: Priority, degraded: bool, wait_s: float) -> None:
        """Count one admission (degraded or not) and observe its predicted wait (seconds)."""
        if self._metrics is None:
            return
        child = self._decisions.get((priority, degraded))
        if child is None:
            child = self._decisions[priority, degraded] = self._metrics.decisions.labels(
                self.policy.name, str(priority), "admitted", "degraded" if degraded else "none")
        child.inc()
        self._wait_hist.observe(wait_s)

    def record_refused(self, priority: Priority, reason: RejectReason) -> None:
        """Count one refusal for ``reason``."""
        if self._metrics is None:
            return
        child = self._decisions.get((priority, reason))
        if child is None:
            child = self._decisions[priority, reason] = self._metrics.decisions.labels(
                self.policy.name, str(priority), "rejected", str(reason))
        child.inc()

    def observe_prediction_error(self, error_s: float) -> None:
        """Actual minus predicted TTFT of one admitted request (seconds): the metric, and
        the adaptive margin's sample."""
        if self.margin.observe(error_s) and self._metrics is not None:
            self._margin_gauge.set(self.margin.value)
        if self._metrics is not None:
            self._error_hist.observe(error_s)

    def _counts(self) -> dict[str, Any]:
        """The bucket's decisions and finished requests, read from the metrics (the one
        count of them; none without a registry)."""
        if self._metrics is None:
            return {}
        name = self.policy.name
        admitted = degraded = 0
        rejected: dict[str, int] = {}
        for s in _samples(self._metrics.decisions, name):
            if s.labels["decision"] == "admitted":
                admitted += int(s.value)
                degraded += int(s.value) if s.labels["reason"] == "degraded" else 0
            else:
                reason = s.labels["reason"]
                rejected[reason] = rejected.get(reason, 0) + int(s.value)
        finished = {s.labels["outcome"]: int(s.value)
                    for s in _samples(self._metrics.requests_finished, name)}
        return {"admitted": admitted, "degraded": degraded, "rejected": rejected,
                "finished": finished}

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain data for ``GET /admin/buckets`` (times in seconds, relative to now)."""
        p = self.policy
        for rep in self.replicas:
            rep.advance(now)
        util = self.utilization(now)
        return {
            "ttft_slo_s": p.ttft_slo_s,
            "e2e_slo_s": p.e2e_slo_s,
            "utilization": util,
            "target_utilization": p.target_utilization,
            "headroom": p.target_utilization - util,
            "queue_depth": self.queued(),
            "in_flight": sum(rep.in_flight for rep in self.replicas),
            "spilled_in_flight": self.spilled_in_flight,
            "limits": {"max_queue": p.max_queue, "max_concurrency": p.max_concurrency,
                       "degraded_min_tokens": p.degraded_min_tokens},
            "learned_output_tokens": self.lengths.estimate,
            "margin": self.margin.snapshot(),
            "counts": self._counts(),
            "replicas": [rep.snapshot(now) for rep in self.replicas],
        }
