"""The timeline admission controller: the state the pure rule reads, and its tickets.

:class:`TimelineAdmitter` implements :class:`router.admission.Admitter`. Per
decision it advances each replica's timeline to now, picks the eligible replica
with the least predicted TTFT (ties: fewest in flight, then config order),
checks the tenant's limits, asks :func:`router.admission.decision.judge`, and on
admission places the reservation and hands out a :class:`TimelineTicket`. A request its
bucket refuses for capacity is offered to the larger buckets of its model in order
(:mod:`router.admission.spill`: the rule; here only the state it reads): the first that takes
it admits it, else the origin's refusal stands with the soonest ``Retry-After`` over all.

The ticket is the request's hold on its slot; the handler reports the first
token (which pins the observed start and feeds the prediction-error metric and the
adaptive margin, :mod:`router.admission.margin`) and
ends it exactly once with ``finish`` (which frees the slot at once, moving the
requests queued behind it earlier, and teaches the output-length model).

Methods for the HTTP wiring: :meth:`TimelineAdmitter.observe_load` (merge a
backend's ``/load`` report), :meth:`TimelineAdmitter.ratelimit` (a tenant's
``x-ratelimit-*`` numbers) and :meth:`TimelineAdmitter.snapshot` (``GET /admin/buckets``).
A backend that refuses a request's deadline corrects the timeline through the ticket
(:meth:`TimelineTicket.refused`).

Not thread-safe: one controller per event loop (each worker process has its
own, and they meet only through the backends' reports).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from lpu_protocol.load_report import LoadReport, ScheduleReport
from router.admission import (
    AdmissionRequest,
    Admitted,
    Decision,
    Health,
    RateLimitState,
    Refused,
    Terms,
    always_up,
)
from router.admission.bucket_state import BucketState
from router.admission.decision import Inputs, judge
from router.admission.observed import timing_in_use
from router.admission.priority import rule_table
from router.admission.ratelimit import Charge, TenantLimiter
from router.admission.settings import AdmissionSettings, BucketPolicy, PriorityRule
from router.admission.spill import SPILLABLE, SpillPair, consider, soonest, spill_targets
from router.admission.timeline import ReplicaTimeline, Reservation
from router.canary import Canary, CanaryState, Role
from router.metrics import RouterMetrics
from router.outcomes import Outcome, RejectReason

__all__ = ["TimelineAdmitter", "TimelineTicket"]

_COMPLETED = Outcome.COMPLETED  # an enum member costs a class lookup, once per request here
_MERGED, _SKIPPED, _INVALID = "merged", "skipped", "invalid"
"""What became of an answer's ``x-lpu-schedule`` (the ``result`` label)."""


class _NoCount:
    def inc(self, amount: float = 1.0) -> None:
        """Without metrics: nothing counted."""


def _schedule_counters(metrics: RouterMetrics | None) -> dict[str, Any]:
    """One child per result of ``schedule_reports``, resolved once (per request: one inc)."""
    if metrics is None:
        return dict.fromkeys((_MERGED, _SKIPPED, _INVALID), _NoCount())
    return {r: metrics.schedule_reports.labels(r) for r in (_MERGED, _SKIPPED, _INVALID)}


class TimelineTicket:
    """One admitted request's reservation. Implements :class:`router.admission.Ticket`."""

    __slots__ = (
        "_bucket", "_canary", "_charge", "_decided_at", "_ended", "_first_seen", "_limiter",
        "_max_tokens", "_owner", "_predicted_ttft", "_priority", "_prompt_tokens", "_replica",
        "_res", "_reserve_tokens", "_role", "_spilled",
    )

    def __init__(
        self, owner: TimelineAdmitter, bucket: BucketState, replica: ReplicaTimeline,
        res: Reservation, req: AdmissionRequest, max_tokens: int, reserve_tokens: int,
        predicted_ttft: float, limiter: TenantLimiter | None, charge: Charge | None,
        spilled: bool = False, canary: Canary | None = None, role: Role = Role.STABLE,
    ) -> None:
        """``spilled``: the request spilled into ``bucket``, whose spilled count it holds
        until it ends. ``canary``: the bucket's canary, told the request's first token and end
        under ``role``."""
        self._owner = owner
        self._bucket = bucket
        self._replica = replica
        self._res = res
        self._decided_at = res.admitted_at
        self._predicted_ttft = predicted_ttft
        self._priority = req.priority
        self._prompt_tokens = req.prompt_tokens
        self._max_tokens = max_tokens
        self._reserve_tokens = reserve_tokens
        self._limiter = limiter
        self._charge = charge
        self._ended = False
        self._first_seen = False
        self._spilled = spilled
        self._canary = canary
        self._role = role
        if spilled:
            bucket.spilled_in_flight += 1

    @property
    def backend(self) -> str:
        return self._replica.url

    @property
    def ended(self) -> bool:
        return self._ended

    def first_token(self) -> None:
        """Observe the TTFT (metric) and pin the request's start at ``now - prefill``.

        The first byte reaches the client after the backend made it, so the pinned
        start errs late, the safe side for the requests behind it.
        """
        if self._ended or self._first_seen:
            return
        self._first_seen = True
        now = self._owner.clock()
        error = now - self._decided_at - self._predicted_ttft
        self._bucket.observe_prediction_error(error)
        if self._canary is not None:
            self._canary.first_token(self._role, now - self._decided_at, error)
        self._replica.observe_start(self._res, now - self._replica.shape.prefill_s, now)

    def schedule(self, value: str) -> None:
        """The backend's answer carried its schedule (``x-lpu-schedule``): merge it into the
        replica's timeline, the request's decision time as when it was sent (reservations
        admitted since count as unseen: errs late). Junk is ignored (a foreign or hostile
        backend) and counted; with ``schedule_from_answers`` off, nothing happens. Valid
        whether or not the ticket has ended. Cost: the parse (~3 us at 8 slots) and
        :meth:`~router.admission.timeline.ReplicaTimeline.merge_schedule`."""
        owner = self._owner
        if not owner.schedule_from_answers:
            return
        try:
            report = ScheduleReport.from_header(value)
        except ValueError:
            owner.schedule_counts[_INVALID].inc()
            return
        # Sent just after this request's own decision: the answer holds its reservation.
        merged = self._replica.merge_schedule(report.slot_free_in_s, owner.clock(),
                                              math.nextafter(self._decided_at, math.inf))
        owner.schedule_counts[_MERGED if merged else _SKIPPED].inc()

    def _end(self) -> bool:
        """Mark the ticket ended, once (a spilled one leaves its bucket's spilled count); False
        when it already was."""
        if self._ended:
            return False
        self._ended = True
        if self._spilled:
            self._bucket.spilled_in_flight -= 1
        return True

    def finish(self, outcome: Outcome, completion_tokens: int | None = None) -> None:
        """End the request (idempotent): free the slot now, learn the output length."""
        if not self._end():
            return
        if self._canary is not None:
            self._canary.ended(self._role, outcome is Outcome.FAILED)
        now = self._owner.clock()
        b, rep, r = self._bucket, self._replica, self._res
        rep.advance(now)
        if r.started and r.start < now:
            b.windows[rep.url].add_interval(r.start, now, now)
        rep.release(r, now)
        if completion_tokens is not None:
            if outcome is _COMPLETED:
                b.lengths.observe(completion_tokens)
            if self._limiter is not None and self._charge is not None:
                self._limiter.refund(self._charge, self._max_tokens - completion_tokens, now)

    def refused(self, predicted_ttft_s: float) -> None:
        """The backend answered 429 ``deadline_unreachable`` predicting that TTFT (seconds).

        The timeline under-estimated that replica: no slot of it frees before
        ``now + reported - prefill`` (raised as its floor). The reservation is dropped and the
        tenant's charge refunded; a later ``finish`` is a no-op."""
        reported_ttft_s = predicted_ttft_s
        if not self._end():
            return
        now = self._owner.clock()
        rep = self._replica
        rep.refused(self._res, now + reported_ttft_s - rep.shape.prefill_s, now)
        self._uncharge(now)
        self._bucket.record_refused(self._priority, RejectReason.BACKEND_DEADLINE)

    def withdraw(self, reason: RejectReason) -> None:
        """End the request as never admitted, refused for ``reason`` after the decision (the
        shared limits store said over): the reservation is dropped, nothing is learned, the
        tenant's charge is refunded. Idempotent; a no-op after ``finish``."""
        if not self._end():
            return
        now = self._owner.clock()
        self._replica.advance(now)
        self._replica.release(self._res, now)
        self._uncharge(now)
        self._bucket.record_refused(self._priority, reason)

    def _uncharge(self, now: float) -> None:
        if self._limiter is not None and self._charge is not None:
            self._limiter.refund(self._charge, self._prompt_tokens + self._max_tokens, now,
                                 request=True)


def _pick(b: BucketState, now: float, exclude: frozenset[str], version: str | None = None,
          want: bool = False) -> tuple[ReplicaTimeline | None, float, int, int]:
    """``b``'s usable replica with the least predicted TTFT (ties: fewest in flight, then config
    order) and that TTFT, with the bucket's queued and in-flight counts over every replica.
    With a ``version`` (a canary's), only replicas whose last report says that version
    (``want``) or only the others (not ``want``) are usable."""
    best: ReplicaTimeline | None = None
    best_ttft = best_load = 0.0
    queued = in_flight = 0
    for rep in b.replicas:
        q, n, start = rep.poll(now)
        queued += q
        in_flight += n
        if not (rep.health.up and rep.ready) or (exclude and rep.shape.url in exclude):
            continue
        if version is not None and (_version(rep) == version) is not want:
            continue
        ttft = start - now + rep.shape.prefill_s
        if best is None or ttft < best_ttft or (ttft == best_ttft and n < best_load):
            best, best_ttft, best_load = rep, ttft, n
    return best, best_ttft, queued, in_flight


def _version(rep: ReplicaTimeline) -> str | None:
    """The artifact version ``rep`` last reported (None before its first report)."""
    report = rep.last_report
    return report.version if report is not None else None


class TimelineAdmitter:
    """Admission from exact per-replica timelines. See the module docstring."""

    def __init__(
        self,
        settings: AdmissionSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: RouterMetrics | None = None,
        health: Health = always_up,
        canaries: Mapping[str, Canary] | None = None,
    ) -> None:
        """``canaries``: per bucket name, its canary (:mod:`router.canary`), which picks the
        version each admitted request goes to."""
        self.settings = settings
        self._canaries = {name: c for name, c in (canaries or {}).items() if c is not None}
        self.clock = clock
        now = clock()
        self._buckets = {b.name: BucketState(b, settings, metrics, now, health, clock=clock)
                         for b in settings.buckets}
        self._rules = rule_table(settings.priorities)
        self._tenants = {t.name: TenantLimiter(t) for t in settings.tenants
                         if t.requests_per_minute is not None or t.tokens_per_minute is not None}
        self._seq = itertools.count()
        self._spill = {b.name: spill_targets(b, settings.buckets) for b in settings.buckets}
        """Per origin bucket: its spill candidates, in the order they are tried."""
        self.schedule_from_answers = settings.schedule_from_answers
        """Merge the schedule a backend puts on its answers (``x-lpu-schedule``)."""
        self.schedule_counts = _schedule_counters(metrics)
        """Per result (merged, skipped, invalid): the counter of answers' schedules."""

    def decide(self, req: AdmissionRequest, exclude: frozenset[str] = frozenset()) -> Decision:
        """Admit or refuse now, never waiting. Raises KeyError for an unknown bucket."""
        now = self.clock()
        b = self._buckets[req.bucket]
        rule = self._rules[req.priority]
        s = self.settings
        limiter = self._tenants.get(req.tenant) if req.tenant is not None else None
        canary = self._canaries.get(req.bucket)
        role = Role.STABLE
        if canary is not None and canary.splitting:
            # The split picks the version first, then the replica among those serving it.
            role = canary.route()
            version = canary.canary_version
            best, best_ttft, queued, in_flight = _pick(b, now, exclude, version,
                                                       role is Role.CANARY)
            if best is None and role is Role.CANARY:
                role = Role.STABLE  # no replica serves the canary now: a stable one takes it
                best, best_ttft, queued, in_flight = _pick(b, now, exclude, version, False)
            elif best is None and canary.state is CanaryState.ACTIVE:
                # No stable replica left (a rollout to the canary's version): the canary's
                # replicas take it while the canary is trusted; never once rolled back.
                role = Role.CANARY
                best, best_ttft, queued, in_flight = _pick(b, now, exclude, version, True)
        else:
            best, best_ttft, queued, in_flight = _pick(b, now, exclude)
        if best is None:
            why = "every healthy replica" if exclude else "no healthy replica"
            return self._refuse(b, req, Refused(
                RejectReason.NO_BACKEND,
                f"bucket '{b.policy.name}' has {why} left for this request",
                max(s.min_retry_after_s, 1.0)))
        if limiter is not None:
            over = limiter.check(req.prompt_tokens + req.max_tokens, now)
            if over is not None:
                reason, retry, message = over
                return self._refuse(b, req, Refused(
                    reason, message, max(retry, s.min_retry_after_s)))
        wait = best_ttft - best.shape.prefill_s
        terms = self._judge(b, b.policy, rule, req, best, wait, queued, in_flight, now)
        if isinstance(terms, Refused):
            pairs = self._spill[b.policy.name]
            if pairs and terms.reason in SPILLABLE:
                return self._spill_or_refuse(b, req, terms, pairs, rule, now, exclude, limiter)
            return self._refuse(b, req, terms)
        if canary is not None:
            canary.admitted()
        return self._admit(b, best, req, terms, wait, now, limiter, None, canary, role)

    def _admit(self, b: BucketState, best: ReplicaTimeline, req: AdmissionRequest, terms: Terms,
               wait: float, now: float, limiter: TenantLimiter | None,
               spilled_from: str | None, canary: Canary | None = None,
               role: Role = Role.STABLE) -> Admitted:
        """Place the reservation on ``best`` of ``b``, charge the tenant (once), hand out the
        ticket (told to ``canary`` under ``role``; spilled requests are in no canary)."""
        shape = best.shape
        res = best.reserve(next(self._seq), shape.timings.service_s(terms.reserve_tokens), now)
        assert terms.predicted_ttft_s is not None, "the rule predicts every admission"
        ratelimit = charge = None
        if limiter is not None:
            charge = limiter.consume(req.prompt_tokens + terms.max_tokens, now)
            ratelimit = limiter.state(now)
        ticket = TimelineTicket(self, b, best, res, req, terms.max_tokens, terms.reserve_tokens,
                                terms.predicted_ttft_s, limiter, charge,
                                spilled_from is not None, canary, role)
        b.record_admitted(req.priority, terms.degraded, wait)
        return Admitted(shape.url, ticket, terms, wait, ratelimit, b.policy.name, spilled_from)

    def _spill_or_refuse(
        self, origin: BucketState, req: AdmissionRequest, refused: Refused,
        pairs: tuple[SpillPair, ...], rule: PriorityRule, now: float, exclude: frozenset[str],
        limiter: TenantLimiter | None,
    ) -> Decision:
        """The origin refused ``req`` for capacity: the first candidate that takes it (the
        spill rule, :mod:`router.admission.spill`), else ``refused`` with the soonest retry
        over the origin and every candidate the judge refused (set in place: no copy on the
        refusal path). At most one judge per candidate."""
        retry = refused.retry_after_s
        by: str | None = None
        """The candidate whose retry is sooner than the origin's, if any."""
        need = req.need_tokens or req.prompt_tokens
        for pair in pairs:
            t = self._buckets[pair.target.name]
            if consider(pair, need, req.max_tokens, t.utilization(now),
                        t.spilled_in_flight) is not None:
                continue
            best, best_ttft, queued, in_flight = _pick(t, now, exclude)
            if best is None:
                continue
            wait = best_ttft - best.shape.prefill_s
            terms = self._judge(t, pair.policy, rule, req, best, wait, queued, in_flight, now)
            if isinstance(terms, Refused):
                sooner = soonest(retry, terms.retry_after_s)
                if sooner is not retry:
                    retry, by = sooner, t.policy.name
                continue
            return self._admit(t, best, req, terms, wait, now, limiter, origin.policy.name)
        if by is not None and retry is not None:
            # The message's hint must say what the header says.
            head = refused.message.split("; retry in ", 1)[0]
            refused.message = f"{head}; retry in {retry:.3f} s (in bucket '{by}')"
            refused.retry_after_s = retry
        return self._refuse(origin, req, refused)

    def _judge(self, b: BucketState, policy: BucketPolicy, rule: PriorityRule,
               req: AdmissionRequest, best: ReplicaTimeline, wait: float, queued: int,
               in_flight: int, now: float) -> Terms | Refused:
        """The pure rule on ``b``'s state for a request that would wait ``wait`` on ``best``,
        under ``policy`` (``b``'s own, or a spill pair's: the request's SLOs, ``b``'s caps)."""
        s = self.settings
        b.decided_at = now
        margin = b.margin.value
        if wait > margin:
            util, util_age = b.utilization(now), now - b.utilization_at
        else:
            # The rule reads utilization only while a queue forms (the guard, and a refusal's
            # retry when it is sooner than the wait, which it then cannot be); measuring it
            # was the largest part of a light-load decision.
            util, util_age = math.nan, 0.0
        # Positional, in the field order of Inputs: seventeen keywords cost more than the rule.
        return judge(Inputs(
            policy, rule, wait, best.shape.timings,  # policy, rule, wait_s, timings
            req.max_tokens, b.lengths.reserve_tokens(req.max_tokens),  # max_, reserve_tokens
            req.wait_budget_s, queued, in_flight,  # wait_budget_s, queued, in_flight
            util,  # utilization
            b.next_queue_exit_s, b.next_slot_exit_s,  # from decided_at
            margin, s.utilization_window_s, s.min_retry_after_s,  # margin_s, window_s, min_retry
            req.elapsed_s, util_age,  # elapsed_s, utilization_age_s
        ))

    @staticmethod
    def _refuse(b: BucketState, req: AdmissionRequest, refused: Refused) -> Refused:
        b.record_refused(req.priority, refused.reason)
        return refused

    def ratelimit(self, tenant: str | None) -> RateLimitState | None:
        """The tenant's current ``x-ratelimit-*`` numbers (None without limits)."""
        limiter = self._tenants.get(tenant) if tenant is not None else None
        return limiter.state(self.clock()) if limiter is not None else None

    def in_flight(self, bucket: str, backend: str) -> int:
        return self._buckets[bucket].by_url[backend].in_flight

    def replica_status(self, bucket: str, url: str) -> tuple[bool, LoadReport | None]:
        """Whether ``url`` of ``bucket`` is admitted to now (healthy and ready), and its last
        ``/load`` report (:class:`router.rollout.ReplicaView`)."""
        rep = self._buckets[bucket].by_url[url]
        return rep.eligible, rep.last_report

    def observe_timing(self, bucket: str, backend: str, timing: str, observed: float,
                       samples: int) -> None:
        """The router's estimate of ``backend``'s ``timing`` (``prefill`` or ``per_token``:
        the median of ``samples`` of its streams, :mod:`router.drift`): beyond the drift
        tolerance from what the replica declares, its timeline schedules with it
        (:mod:`router.admission.observed`); the bucket's active canary hears it under the
        replica's role. Unknown buckets or backends are ignored."""
        b = self._buckets.get(bucket)
        rep = b.by_url.get(backend) if b is not None else None
        if rep is None:
            return
        field = timing + "_s"
        declared: float = getattr(rep.served, field)
        s = self.settings
        rep.use_observed(field, timing_in_use(declared, observed, samples,
                                              tolerance=s.drift_tolerance,
                                              min_samples=s.drift_min_samples),
                         self.clock())
        canary = self._canaries.get(bucket)
        if canary is not None and canary.state is CanaryState.ACTIVE:  # per version, too
            role = Role.CANARY if _version(rep) == canary.canary_version else Role.STABLE
            canary.observed_timing(role, backend, timing, observed, samples)

    def hold(self, bucket: str, url: str) -> None:
        """Admit nothing more to ``url`` of ``bucket`` until a ``/load`` report says it is
        ready (a rollout is about to swap its artifact)."""
        self._buckets[bucket].by_url[url].ready = False

    def observe_load(
        self, bucket: str, backend: str, report: LoadReport | Mapping[str, Any], now: float,
        *, sent_at: float | None = None,
    ) -> None:
        """Merge a backend's ``/load`` report, received at ``now`` (router clock).

        ``sent_at`` is when the poll was sent (default ``now``): reservations
        admitted since then count as not yet in the report. A Mapping is
        validated (ValueError if malformed). Raises KeyError for an unknown
        bucket or backend. The merge rule is in :mod:`router.admission.timeline`.
        """
        b = self._buckets[bucket]
        rep = b.by_url[backend]
        lr = report if isinstance(report, LoadReport) else LoadReport.from_mapping(report)
        rep.merge_report(lr, now, now if sent_at is None else min(sent_at, now))
        busy = min(1.0, lr.running / lr.slots) if lr.slots > 0 else 0.0
        b.windows[backend].add_sample(busy, now)

    def snapshot(self) -> dict[str, Any]:
        """Plain data for ``GET /admin/buckets``: per bucket, its timelines, load and limits."""
        now = self.clock()
        return {
            "mode": str(self.settings.mode),
            "prediction": str(self.settings.prediction),
            "margin": str(self.settings.margin),
            "buckets": {name: self._bucket_snapshot(name, b, now)
                        for name, b in self._buckets.items()},
        }

    def _bucket_snapshot(self, name: str, b: BucketState, now: float) -> dict[str, Any]:
        data = b.snapshot(now)
        canary = self._canaries.get(name)
        if canary is not None:
            data["canary"] = canary.as_json()
        return data
