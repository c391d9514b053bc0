"""One request's attempts on its bucket's replicas, until one answers or none is left.

:meth:`AttemptLoop.run` takes a placed request and returns one result: the backend's answer
(:class:`~router.relay.RelayResult`, relayed to the client or being relayed) or, when every
attempt failed before a byte reached the client, :class:`Unserved` (the last failure). A
request no attempt got admitted raises :class:`~router.errors.Rejection` (429 / 503 with
``Retry-After``): the admitter refused it, or every replica left refused its deadline.

Each turn asks the admitter (:mod:`router.admission`) with the replicas already tried
excluded, and :meth:`AttemptLoop._attempt` sends the request to the replica it picked. Rules:

* **one ticket per attempt, ended in one place**: the attempt's ``finally`` ends it exactly
  once, with ``refused`` when the backend refused the deadline (a correction of the timeline,
  not a failure), else ``finish`` with the attempt's outcome;
* **admitted, counted once, at one moment** (:meth:`AttemptLoop._admitted`): when the request
  leaves without a deadline (nothing can refuse it any more), else once the backend took it
  (its status line came), failed it otherwise (a 5xx, a refused connection: admitted requests
  that failed), or the client left while the backend had it;
* **retries**: a failure before any byte went to the client (connection refused, 5xx) is
  retried on another replica at most ``server.max_retries`` times; a deadline refusal excludes
  that replica and does not count as a retry (each excludes one replica, so the loop ends);
* **the pod's limits** (``[limits] store = "redis"``, :mod:`router.limits.shared`): the first
  attempt the local decision admits is charged in the shared store before it is sent (over a
  limit: the ticket is withdrawn and the request refused, never admitted); retries keep that
  charge, and :meth:`AttemptLoop.run` gives it back once, when the request ends;
* **spill** (:mod:`router.admission.spill`): a decision may admit the request to a larger
  bucket of its model (``decision.bucket``, ``decision.spilled_from``); the attempt is then
  that bucket's in everything: its replica, its upstream model, its health reports, its
  series, ``x-lpu-bucket`` (with ``x-lpu-spilled-from`` naming the origin) and the shared
  limits' bucket charge. ``lpu_router_spills_total{from,to}`` counts it once, when admitted;
* **padding** (:func:`padding_tokens`): a completed request adds the shape tokens it left
  unused to ``lpu_router_padding_tokens_total`` of the bucket that served it;
* **a failure the request may have caused** (``suspect``, :mod:`router.errors`) is charged to
  that replica only once another replica served the request; a second replica failing it too
  makes it the request's fault (``request_faults``), and no replica is charged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from lpu_protocol.headers import (
    X_LPU_BUCKET,
    X_LPU_MAX_TOKENS,
    X_LPU_MAX_TOKENS_CLAMPED_FROM,
    X_LPU_SPILLED_FROM,
)
from lpu_protocol.openai_api import CompletionRequest, forward_body
from router.access_log import Exchange
from router.admission import AdmissionRequest, Admitted, Admitter, Refused
from router.admission.settings import AdmissionSettings
from router.admission_headers import admitted_headers, ratelimit_headers, refusal_headers
from router.backend_http import Response
from router.bucket_config import BucketConfig
from router.buckets import Placement
from router.drift import DriftEstimator
from router.errors import Rejection, UpstreamFailure, refusal_error
from router.limits.shared import RequestCharge, SharedLimits
from router.metrics import RouterMetrics
from router.outcomes import Outcome, RejectReason
from router.pool import BackendPool
from router.relay import RelayResult, Upstream, relay, schedule_of, upstream_headers
from router.series import Children, RequestSeries

_DRIFT_TOLERANCE = AdmissionSettings().drift_tolerance

__all__ = ["AttemptLoop", "Unserved", "padding_tokens"]

_NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Unserved:
    """Every attempt of an admitted request failed before a byte reached the client."""

    failure: UpstreamFailure
    """The last attempt's failure: the client's error."""
    retry_after_s: float | None
    """Set when the last failure was a deadline refusal: the shortest time after which a
    replica that refused could meet the deadline."""


def padding_tokens(bucket: BucketConfig, prompt_tokens: int,
                   completion_tokens: int) -> tuple[int, int]:
    """The shape tokens one completed request left unused in ``bucket``: ``(prompt, allowance)``.

    The compiled shape holds ``max_seq_len`` tokens, of which the last ``max_output_tokens``
    are its output part and the rest, ``P = max_seq_len - max_output_tokens``, its prompt part.
    Prompt padding is ``max(0, P - prompt)``; allowance padding is the rest of the shape beyond
    the prompt and the completion, ``max_seq_len - max(P, prompt) - completion`` (a prompt
    longer than ``P`` takes room from the output part). The two add up to
    ``max_seq_len - prompt - completion``, never below 0."""
    part = bucket.max_seq_len - bucket.max_output_tokens
    prompt_pad = part - prompt_tokens if prompt_tokens < part else 0
    allowance_pad = bucket.max_seq_len - max(part, prompt_tokens) - completion_tokens
    return prompt_pad, allowance_pad if allowance_pad > 0 else 0


class AttemptLoop:
    """The attempts of one request at a time (one instance serves every request)."""

    def __init__(self, *, admitter: Admitter, pool: BackendPool, upstream: Upstream,
                 metrics: RouterMetrics, series: RequestSeries, max_retries: int,
                 min_retry_after_s: float, upstream_model: dict[str, str | None],
                 clock: Callable[[], float], limits: SharedLimits | None = None,
                 buckets: Mapping[str, BucketConfig] | None = None,
                 drift: DriftEstimator | None = None) -> None:
        """``buckets``: the configured buckets by name, for padding accounting (None: none).
        ``drift``: observes each completed stream's timings (None: one at the default
        tolerance)."""
        self._admitter = admitter
        self._drift = drift or DriftEstimator(metrics, tolerance=_DRIFT_TOLERANCE)
        self._buckets = buckets or {}
        self._spills = Children(metrics.spills)
        self._padding = Children(metrics.padding_tokens)
        self._limits = limits
        self._pool = pool
        self._upstream = upstream
        self._series = series
        self._clock = clock
        self._max_retries = max_retries
        self._min_retry_after_s = min_retry_after_s
        self._upstream_model = upstream_model
        self._upstream_errors = Children(metrics.upstream_errors)
        self._retries = Children(metrics.retries)
        self._request_faults = Children(metrics.request_faults)
        self._clamped = Children(metrics.clamped)

    async def run(self, request: web.Request, ex: Exchange, req: CompletionRequest,
                  placement: Placement, adm: AdmissionRequest,
                  path: str) -> RelayResult | Unserved:
        """Serve the request (see the module docstring); raises :class:`Rejection` when it
        was never admitted."""
        limits = self._limits
        if limits is None or not limits.counts(adm.tenant, adm.bucket):
            return await self._run(request, ex, req, placement, adm, path, None)
        # The shared store counts it: charged on its first admitted attempt, given back here.
        charge = RequestCharge(limits)
        tokens = None
        try:
            got = await self._run(request, ex, req, placement, adm, path, charge)
            if isinstance(got, RelayResult):
                tokens = got.completion_tokens
            return got
        finally:
            charge.end(admitted=ex.admitted, completion_tokens=tokens)

    def _padded(self, name: str, adm: AdmissionRequest, got: RelayResult) -> None:
        """Count a completed request's padding in ``name``, the bucket that served it."""
        bucket = self._buckets.get(name)
        if bucket is None or got.outcome is not Outcome.COMPLETED \
                or got.completion_tokens is None:
            return
        prompt = got.prompt_tokens if got.prompt_tokens is not None else adm.prompt_tokens
        pad_prompt, pad_allowance = padding_tokens(bucket, prompt, got.completion_tokens)
        self._padding(name, "prompt").inc(pad_prompt)
        self._padding(name, "allowance").inc(pad_allowance)

    async def _run(self, request: web.Request, ex: Exchange, req: CompletionRequest,
                   placement: Placement, adm: AdmissionRequest, path: str,
                   charge: RequestCharge | None) -> RelayResult | Unserved:
        bucket = placement.bucket.name
        """The bucket of the attempt being made: the decision's (a spill names a larger one)."""
        tried: set[str] = set()
        failures = 0
        """Failures other than deadline refusals: at most ``max_retries`` are retried."""
        suspect: str | None = None
        """A replica whose failure may have been the request's fault, not charged yet."""
        deadline_wait: float | None = None
        """Shortest time after which a replica that refused the deadline could meet it."""
        last: UpstreamFailure | None = None
        while True:
            # The SLOs count from the request's arrival: what it spent here is used up.
            adm.elapsed_s = self._clock() - ex.started
            decision = self._admitter.decide(adm, frozenset(tried) if tried else _NOTHING)
            if isinstance(decision, Refused):
                if last is None or (not ex.admitted
                                    and decision.reason is not RejectReason.NO_BACKEND):
                    raise _refusal(decision)
                break  # every replica left was tried
            bucket = decision.bucket or placement.bucket.name
            if charge is not None:  # the local decision admitted it: now the pod's limits
                decision = await charge.admit(adm, decision)
            if tried:
                self._retries(bucket).inc()
            backend = decision.backend
            deadline = decision.terms.deadline_s
            if deadline is not None:  # counted from the request's arrival
                deadline = max(0.0, deadline - (self._clock() - ex.started))
            got = await self._attempt(request, ex, req, placement, adm, decision, deadline,
                                      path)
            if isinstance(got, RelayResult):
                if got.outcome is Outcome.COMPLETED and suspect is not None:
                    self._pool.report_failure(bucket, suspect)  # served: not the request
                if got.failure is None:
                    self._pool.report_success(bucket, backend)
                else:
                    self._upstream_failed(bucket, backend, got.failure)
                self._padded(bucket, adm, got)
                return got
            last = got
            tried.add(backend)
            self._upstream_errors(bucket, backend, got.kind).inc()
            if got.reason is RejectReason.BACKEND_DEADLINE:
                wait = max(0.0, _reported_ttft(got, deadline) - (deadline or 0.0))
                deadline_wait = wait if deadline_wait is None else min(deadline_wait, wait)
            else:
                failures += 1
            if got.suspect:
                if suspect is not None:  # a second replica failed it too: the request's fault
                    self._request_faults(bucket).inc()
                    break
                suspect = backend
            elif got.health:
                self._pool.report_failure(bucket, backend)
            if not got.retryable or failures > self._max_retries:
                break
        if not ex.admitted:  # every replica left refused the deadline
            raise self._deadline_refusal(last, deadline_wait)
        return Unserved(last, deadline_wait
                        if last.reason is RejectReason.BACKEND_DEADLINE else None)

    async def _attempt(self, request: web.Request, ex: Exchange, req: CompletionRequest,
                       placement: Placement, adm: AdmissionRequest, decision: Admitted,
                       deadline_s: float | None, path: str) -> RelayResult | UpstreamFailure:
        """Send the request to the decision's replica and relay its answer. The ticket ends
        here, exactly once; a failure before the client got a byte is returned, not raised."""
        ticket, backend = decision.ticket, decision.backend
        bucket = decision.bucket or placement.bucket.name
        ex.backend = backend
        predicted = decision.terms.predicted_ttft_s
        ex.predicted_ttft_ms = None if predicted is None else predicted * 1e3
        outcome, tokens = Outcome.FAILED, None
        sent_at = self._clock()
        refused_ttft: float | None = None
        refused_schedule: str | None = None
        if deadline_s is None:  # nothing can refuse it any more
            self._admitted(ex, adm, placement, decision)
        try:
            body = forward_body(req, decision.terms.max_tokens,
                                self._upstream_model.get(bucket))
            headers = upstream_headers(request.headers, ex.request_id, deadline_s)
            upstream = await self._upstream.open(backend + path, body, headers)
            schedule = schedule_of(upstream)
            if schedule is not None:  # first: the requests decided meanwhile see it
                ticket.schedule(schedule)
            self._admitted(ex, adm, placement, decision)
            try:
                result = await self._relay(request, ex, placement, decision, upstream)
            finally:
                self._upstream.close(upstream)
            outcome, tokens = result.outcome, result.completion_tokens
            if req.stream and outcome is Outcome.COMPLETED and tokens and ex.ttft_s is not None:
                self._drift.observe(bucket, backend, sent_at=sent_at,
                                    first_at=ex.started + ex.ttft_s, end_at=self._clock(),
                                    tokens=tokens, idle=decision.predicted_wait_s == 0.0)
            return result
        except UpstreamFailure as f:  # before the client got a byte
            if f.reason is RejectReason.BACKEND_DEADLINE:
                refused_ttft = _reported_ttft(f, deadline_s)
                refused_schedule = f.schedule
            else:
                self._admitted(ex, adm, placement, decision)
            return f
        except (asyncio.CancelledError, ConnectionResetError):
            outcome = Outcome.CANCELLED
            self._admitted(ex, adm, placement, decision)  # gone while a backend had it
            raise
        finally:
            if refused_ttft is not None:
                ticket.refused(refused_ttft)
                if refused_schedule is not None:  # the whole schedule, beyond the floor
                    ticket.schedule(refused_schedule)
            else:
                ticket.finish(outcome, tokens)

    def _admitted(self, ex: Exchange, adm: AdmissionRequest, placement: Placement,
                  decision: Admitted) -> None:
        """Count the request as admitted, once (the module docstring says when)."""
        if ex.admitted:
            return
        ex.admitted = True
        bucket = decision.bucket or placement.bucket.name
        # Its series are this bucket's from here on (a retry elsewhere does not move them).
        ex.bucket = bucket
        self._series.admitted(bucket, adm.priority).inc()
        if decision.spilled_from is not None:
            self._spills(decision.spilled_from, bucket).inc()
        if placement.clamped_from is not None:
            self._clamped(bucket, "bucket_cap").inc()
        if decision.terms.degraded:
            self._clamped(bucket, "degraded").inc()

    async def _relay(self, request: web.Request, ex: Exchange, placement: Placement,
                     decision: Admitted, upstream: Response) -> RelayResult:
        """Relay the backend's answer with the router's own headers."""
        terms = decision.terms
        bucket = decision.bucket or placement.bucket.name
        own = {"x-request-id": ex.request_id, X_LPU_BUCKET: bucket,
               X_LPU_MAX_TOKENS: str(terms.max_tokens)}
        if decision.spilled_from is not None:
            own[X_LPU_SPILLED_FROM] = decision.spilled_from
        clamped_from = placement.clamped_from
        if clamped_from is None and terms.degraded:
            clamped_from = placement.max_tokens
        if terms.predicted_ttft_s is not None:
            clamped = "degraded" if terms.degraded else (
                "bucket_cap" if placement.clamped_from is not None else None)
            own |= admitted_headers(terms.predicted_ttft_s, clamped=clamped,
                                    clamped_from=clamped_from)
        elif clamped_from is not None:
            own[X_LPU_MAX_TOKENS_CLAMPED_FROM] = str(clamped_from)
        if decision.ratelimit is not None:
            own |= ratelimit_headers(decision.ratelimit)
        ticket, ttft = decision.ticket, self._series.ttft_seconds(bucket)

        def first_byte() -> None:
            ticket.first_token()
            ex.ttft_s = self._clock() - ex.started
            ttft.observe(ex.ttft_s)

        return await relay(request, upstream, own, first_byte)

    def _upstream_failed(self, bucket: str, backend: str, f: UpstreamFailure) -> None:
        self._upstream_errors(bucket, backend, f.kind).inc()
        if f.health:
            self._pool.report_failure(bucket, backend)

    def _deadline_refusal(self, last: UpstreamFailure, wait: float | None) -> Rejection:
        """Every replica left refused the request's deadline: 429 ``backend_deadline``."""
        reason = RejectReason.BACKEND_DEADLINE
        retry = max(wait or 0.0, self._min_retry_after_s)
        message = (f"No backend can produce the first token within the time to first token SLO"
                   f" now ({last.message}); retry in {retry:.3f} s")
        return Rejection(reason, refusal_error(reason, message), retry,
                         refusal_headers(reason, retry))


def _reported_ttft(refusal: UpstreamFailure, deadline_s: float | None) -> float:
    """The TTFT a backend that refused the deadline predicted; one that gave no figure
    said no to the deadline itself, so at least that."""
    if refusal.predicted_ttft_s is not None:
        return refusal.predicted_ttft_s
    return deadline_s or 0.0


def _refusal(decision: Refused) -> Rejection:
    """The admitter's refusal, as the router's error with its headers."""
    reason = decision.reason
    headers = refusal_headers(reason, decision.retry_after_s,
                              predicted_wait_s=decision.predicted_wait_s,
                              predicted_ttft_s=decision.predicted_ttft_s or 0.0)
    return Rejection(reason, refusal_error(reason, decision.message), decision.retry_after_s,
                     headers)
