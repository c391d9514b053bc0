"""The completion endpoints: a request's way through the router, one step per module.

    parse (openai_api) -> count (tokens) -> bucket (buckets) -> admit (admission)
        -> pick (the admitter's decision) -> relay (relay) -> finish (one outcome)

The handler only asks and obeys. Bookkeeping that both admitters must see identically lives here:
the in-flight gauge, admitted/finished/rejected counters, TTFT and end-to-end histograms, tokens,
the access log line. An admitted request's ticket ends exactly once, in ``finally``. The headers
of a decision (``Retry-After``, ``x-lpu-*``, ``x-ratelimit-*``) are in
:mod:`router.admission_headers`.

Retries: when a backend fails before any byte went to the client (connection refused, 5xx), the
admitter is asked again with that replica excluded, at most ``server.max_retries`` times; the
failed attempt's ticket ends ``failed`` (freeing its slot). A backend's 429
``deadline_unreachable`` (it cannot produce the first token by ``x-lpu-deadline-ms``) is not a
failure but a correction: the timeline controller takes the backend's predicted TTFT
(``backend_refused``, which ends the ticket) and is asked again without that replica -- at most
once per replica, since each refusal excludes one. When no replica is left, the client gets 429
``backend_deadline`` with ``Retry-After`` (the shortest time until a refusing backend could meet
the deadline); such a request counts as rejected, not admitted.

When ``requests_admitted`` counts: at the admitting decision, before the request is sent, when
the backend gets no deadline (admission ``off``, or a decision without one): nothing can refuse
it any more. With a deadline the backend may still refuse it, so it counts once the backend took
it (its status line; for a non-streaming answer that comes with the body) or failed otherwise
(a 5xx, a refused connection: those are admitted requests that failed). The in-flight gauge
moves at the decision either way.

The path is lean on purpose (it is what ``benchmarks/proxy_overhead.py`` measures): the body is
read once and forwarded as it came unless the allowance changed, metric children are looked up
once per label set (:mod:`router.series`), and the access line is built only when its logger
is enabled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Literal

import aiohttp
from aiohttp import web

from lpu_protocol.openai_api import (
    APIError,
    CompletionRequest,
    check_params,
    forward_body,
    parse_request,
)
from lpu_protocol.tokens import TokenCounter, count_prompt
from router.access_log import Exchange
from router.admission import AdmissionRequest, Admitter, Decision, Ticket
from router.admission.controller import TimelineAdmitter
from router.admission.priority import resolve_priority
from router.admission_headers import (
    admitted_headers,
    ratelimit_headers,
    refusal_headers,
)
from router.auth import Auth
from router.body_rate import LARGE_BODY_BYTES
from router.buckets import BucketTable, Placement
from router.config import RouterConfig
from router.errors import Rejection, UpstreamFailure, refusal_error, retry_after_headers
from router.metrics import RouterMetrics
from router.outcomes import Outcome, RejectReason
from router.pool import BackendPool
from router.relay import RelayResult, Upstream, relay, request_headers
from router.series import RequestSeries

__all__ = ["Proxy", "error_response"]

REQUEST_ID = web.RequestKey("request_id", str)
_NOTHING: frozenset[str] = frozenset()
PARSE_OFF_LOOP_BYTES = LARGE_BODY_BYTES
"""Bodies at least this large are parsed on :data:`_parser`'s thread, one at a time: a 4 MB
body costs ~6 ms to parse, most of it in C calls that hold the GIL, so on the loop it would
stall every stream for that long; on the thread the loop takes the GIL back every switch
interval between those calls (measured: the longest stall of the loop fell from 13-17 ms to
~8 ms per 4 MB body), and a flood of large bodies queues behind one thread instead of
taking turns on the loop."""
_parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lpu-parse")


async def _parse(raw: bytes, kind: Literal["chat", "completion"]) -> CompletionRequest:
    """``parse_request`` (the bucket's parameter policy is checked after placement)."""
    if len(raw) < PARSE_OFF_LOOP_BYTES:
        return parse_request(raw, kind, params=None)
    return await asyncio.get_running_loop().run_in_executor(
        _parser, partial(parse_request, raw, kind, params=None))


def error_response(error: APIError, headers: dict[str, str] | None = None) -> web.Response:
    """An OpenAI-shaped JSON error."""
    return web.Response(status=error.status, body=error.to_json(), headers=headers,
                        content_type="application/json")


class Proxy:
    """The completion handlers, given every collaborator by the composition root.

    ``timeline``: the same object as ``admitter`` when it is the timeline controller (None
    with admission ``off``): the handler then also reports backends' deadline refusals to it and
    sends its tenants' ``x-ratelimit-*`` numbers.
    """

    def __init__(self, config: RouterConfig, *, table: BucketTable, counter: TokenCounter,
                 admitter: Admitter, timeline: TimelineAdmitter | None, pool: BackendPool,
                 upstream: Upstream, auth: Auth, metrics: RouterMetrics,
                 clock: Callable[[], float]) -> None:
        self._config = config
        self._table = table
        self._counter = counter
        self._admitter = admitter
        self._timeline = timeline
        self._pool = pool
        self._upstream = upstream
        self._auth = auth
        self._metrics = metrics
        self._series = RequestSeries(metrics)
        self._clock = clock
        self._tenants = {t.policy.name: t.policy for t in config.tenants}
        self._upstream_model = {b.name: b.upstream_model for b in config.buckets}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "chat", "/v1/chat/completions")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.handle(request, "completion", "/v1/completions")

    async def handle(self, request: web.Request, kind: Literal["chat", "completion"],
                     path: str) -> web.StreamResponse:
        ex = Exchange(request_id=request[REQUEST_ID], route=path, started=self._clock(),
                      wall_start=time.time())
        try:
            tenant = self._auth.tenant(request.headers)
            ex.tenant = tenant.policy.name if tenant else None
            raw = await request.read()
            try:
                req = await _parse(raw, kind)
            except APIError as exc:
                raise Rejection(RejectReason.INVALID_REQUEST, exc) from None
            ex.model = req.model
            # Exact up to the model's largest shape, then "at least": bounded work, paced.
            counted = await count_prompt(req, self._counter, self._table.count_limit(req.model))
            ex.prompt_tokens = counted.tokens
            placement = self._table.place(req.model, ex.prompt_tokens, req.max_tokens,
                                          req.max_tokens_param, at_least=not counted.exact)
            ex.bucket = placement.bucket.name
            try:
                check_params(req, placement.bucket.params)
            except APIError as exc:
                raise Rejection(RejectReason.INVALID_REQUEST, exc) from None
            try:
                priority, budget = resolve_priority(
                    tenant.policy if tenant else None, request.headers.get("x-priority"),
                    req.service_tier,
                    on_demand_max_wait_s=self._config.admission.on_demand_max_wait_s,
                )
            except ValueError as exc:
                raise Rejection(RejectReason.INVALID_REQUEST, APIError(
                    400, f"Invalid 'x-priority' header: {exc}.", param="x-priority",
                    code="invalid_value")) from None
            ex.priority = priority.value
            adm = AdmissionRequest(bucket=placement.bucket.name, prompt_tokens=ex.prompt_tokens,
                                   max_tokens=placement.max_tokens, priority=priority,
                                   tenant=ex.tenant, wait_budget_s=budget)
            return await self._serve(request, ex, req, raw, placement, adm, path)
        except Rejection as r:
            ex.reject_reason = r.reason.value
            ex.status = r.error.status
            self._metrics.requests_rejected.labels(ex.bucket or "none", ex.priority,
                                                   r.reason.value).inc()
            headers = refusal_headers(r.reason, r.retry_after_s)
            headers |= r.headers
            headers |= self._limits(ex.tenant)
            return error_response(r.error, headers)
        finally:
            ex.log(self._clock())

    async def _serve(self, request: web.Request, ex: Exchange, req: CompletionRequest,
                     raw: bytes, placement: Placement, adm: AdmissionRequest,
                     path: str) -> web.StreamResponse:
        m = self._metrics
        in_flight = self._series.in_flight
        bucket = placement.bucket.name
        exclude: set[str] = set()
        ticket: Ticket | None = None
        outcome = Outcome.FAILED
        completion: int | None = None
        last: UpstreamFailure | None = None
        failures = 0
        """Failures other than deadline refusals: at most ``server.max_retries`` are retried."""
        suspects: list[str] = []
        """Replicas whose failure may have been the request's fault, not charged yet."""
        deadline_wait: float | None = None
        """Shortest time after which a backend that refused the deadline could meet it."""
        decision: Decision | None = None
        try:
            while True:
                # The SLOs count from the request's arrival: what it spent here is used up.
                adm = replace(adm, elapsed_s=self._clock() - ex.started)
                decision = self._admitter.decide(adm, frozenset(exclude) if exclude
                                                 else _NOTHING)
                if not decision.admitted or decision.ticket is None or decision.backend is None:
                    if last is None or (not ex.admitted
                                        and decision.reason is not RejectReason.NO_BACKEND):
                        raise self._refusal(decision)
                    if not ex.admitted:  # every replica left refused the deadline
                        raise self._deadline_refusal(last, deadline_wait)
                    break
                if exclude:
                    m.retries.labels(bucket).inc()
                ticket, backend = decision.ticket, decision.backend
                ex.backend = backend
                ex.predicted_ttft_ms = decision.predicted_ttft_s * 1e3
                # The deadline counts from the request's arrival: time spent before the
                # decision (and on refused attempts) is time the client already waited.
                deadline = None if decision.deadline_s is None else max(
                    0.0, decision.deadline_s - (self._clock() - ex.started))
                in_flight(bucket, backend).inc()
                if deadline is None:  # nothing can refuse it any more
                    self._admitted(ex, adm, placement, decision)
                try:
                    upstream = await self._open(ex, req, raw, decision.max_tokens, deadline,
                                                request.headers, backend + path)
                    self._admitted(ex, adm, placement, decision)
                    try:
                        result = await self._relay(request, ex, placement, decision, upstream,
                                                   ticket)
                    finally:
                        # Unread content means the client left or the stream broke: drop the
                        # connection so the backend sees the cancel at once.
                        upstream.close()
                except UpstreamFailure as f:
                    last = f
                    m.upstream_errors.labels(bucket, backend, f.kind).inc()
                    exclude.add(backend)
                    if f.reason is RejectReason.BACKEND_DEADLINE:
                        wait = self._backend_refused(ticket, f, deadline)
                        deadline_wait = wait if deadline_wait is None else min(deadline_wait,
                                                                               wait)
                    else:
                        self._admitted(ex, adm, placement, decision)
                        failures += 1
                        ticket.finish(Outcome.FAILED)
                    ticket = None
                    if f.suspect:
                        if suspects:  # a second replica failed it too: the request is the cause
                            m.request_faults.labels(bucket).inc()
                            break
                        suspects.append(backend)
                    elif f.health:
                        self._pool.report_failure(bucket, backend)
                    if not f.retryable or failures > self._config.server.max_retries:
                        break
                    continue
                finally:
                    in_flight(bucket, backend).dec()
                if result.outcome is Outcome.COMPLETED:  # served: the request was not the cause
                    for suspect in suspects:
                        self._pool.report_failure(bucket, suspect)
                self._pool.report_success(bucket, backend) if result.failure is None else \
                    self._upstream_failed(bucket, backend, result.failure)
                outcome, completion = result.outcome, result.completion_tokens
                ex.status = result.response.status
                return result.response
            assert last is not None, "the loop ends by a failure or a refusal after one"
            if not ex.admitted:
                raise self._deadline_refusal(last, deadline_wait)
            error = last.api_error()
            ex.status = error.status
            ex.reject_reason = last.kind
            headers = retry_after_headers(deadline_wait) if deadline_wait is not None and \
                last.reason is RejectReason.BACKEND_DEADLINE else {}
            return error_response(error, headers | self._limits(ex.tenant))
        except (asyncio.CancelledError, ConnectionResetError):
            outcome = Outcome.CANCELLED
            if ticket is not None and decision is not None:  # gone while a backend had it
                self._admitted(ex, adm, placement, decision)
            raise
        finally:
            self._finish(ex, ticket, outcome, completion)

    def _refusal(self, decision: Decision) -> Rejection:
        """The admitter's refusal, as the router's error with its headers."""
        reason = decision.reason or RejectReason.NO_BACKEND
        return Rejection(reason, refusal_error(reason, decision.message), decision.retry_after_s,
                         refusal_headers(reason, decision.retry_after_s,
                                         predicted_wait_s=decision.predicted_wait_s,
                                         predicted_ttft_s=decision.predicted_ttft_s))

    def _deadline_refusal(self, last: UpstreamFailure, wait: float | None) -> Rejection:
        """Every replica left refused the request's deadline: 429 ``backend_deadline``."""
        reason = RejectReason.BACKEND_DEADLINE
        retry = max(wait or 0.0, self._config.admission.min_retry_after_s)
        message = (f"No backend can produce the first token within the time to first token SLO"
                   f" now ({last.message}); retry in {retry:.3f} s")
        return Rejection(reason, refusal_error(reason, message), retry,
                         refusal_headers(reason, retry))

    def _backend_refused(self, ticket: Ticket, f: UpstreamFailure,
                         deadline: float | None) -> float:
        """A backend's 429 ``deadline_unreachable``: correct the timeline (the ticket ends
        there) and return how long until that backend could meet the deadline (seconds)."""
        reported = f.predicted_ttft_s
        if reported is None:  # it said no without a figure: at least the deadline
            reported = deadline or 0.0
        if self._timeline is not None:
            self._timeline.backend_refused(ticket, reported)
        else:
            ticket.finish(Outcome.FAILED)
        return max(0.0, reported - (deadline or 0.0))

    def _admitted(self, ex: Exchange, adm: AdmissionRequest, placement: Placement,
                  decision: Decision) -> None:
        """Count the request as admitted, once (see the module docstring for when)."""
        if ex.admitted:
            return
        ex.admitted = True
        m, bucket = self._metrics, placement.bucket.name
        self._series.admitted(bucket, adm.priority.value).inc()
        self._series.prompt_tokens(bucket).inc(adm.prompt_tokens)
        if placement.clamped_from is not None:
            m.clamped.labels(bucket, "bucket_cap").inc()
        if decision.degraded:
            m.clamped.labels(bucket, "degraded").inc()

    def _limits(self, tenant: str | None) -> dict[str, str]:
        """The tenant's ``x-ratelimit-*`` headers now (none without limits)."""
        if self._timeline is None or tenant is None:
            return {}
        return ratelimit_headers(self._timeline.ratelimit(tenant))

    async def _open(self, ex: Exchange, req: CompletionRequest, raw: bytes, max_tokens: int,
                    deadline_s: float | None, incoming: Mapping[str, str],
                    url: str) -> aiohttp.ClientResponse:
        """Send the request to ``url`` (allowance ``max_tokens``, ``x-lpu-deadline-ms``);
        return once its status line came. The client's body (``raw``, also ``req.wire``) goes
        as it came unless the allowance or the bucket's upstream model name differ: those are
        spliced into its bytes, never re-serialised (``forward_body``)."""
        raw = forward_body(req, max_tokens, self._upstream_model.get(ex.bucket or ""))
        headers = request_headers(incoming)
        headers["x-request-id"] = ex.request_id
        headers["Content-Type"] = "application/json"
        headers["Accept-Encoding"] = "identity"
        if deadline_s is not None:
            headers["x-lpu-deadline-ms"] = f"{deadline_s * 1e3:.1f}"
        return await self._upstream.open(url, raw, headers)

    async def _relay(self, request: web.Request, ex: Exchange, placement: Placement,
                     decision: Decision, upstream: aiohttp.ClientResponse,
                     ticket: Ticket) -> RelayResult:
        """Relay the backend's answer with the router's own headers."""
        own = {"x-request-id": ex.request_id, "x-lpu-bucket": placement.bucket.name,
               "x-lpu-max-tokens": str(decision.max_tokens)}
        clamped = "degraded" if decision.degraded else (
            "bucket_cap" if placement.clamped_from is not None else None)
        clamped_from = placement.clamped_from
        if clamped_from is None and decision.degraded:
            clamped_from = placement.max_tokens
        if self._timeline is not None:
            own |= admitted_headers(decision.predicted_ttft_s, clamped=clamped,
                                    clamped_from=clamped_from)
        elif clamped_from is not None:
            own["x-lpu-max-tokens-clamped-from"] = str(clamped_from)
        own |= ratelimit_headers(decision.ratelimit)

        def first_byte() -> None:
            ticket.first_token()
            ex.ttft_s = self._clock() - ex.started
            self._series.ttft_seconds(placement.bucket.name).observe(ex.ttft_s)

        return await relay(request, upstream, own, first_byte)

    def _upstream_failed(self, bucket: str, backend: str, f: UpstreamFailure) -> None:
        self._metrics.upstream_errors.labels(bucket, backend, f.kind).inc()
        if f.health:
            self._pool.report_failure(bucket, backend)

    def _finish(self, ex: Exchange, ticket: Ticket | None, outcome: Outcome,
                completion: int | None) -> None:
        """Synchronous bookkeeping at the end of an admitted request (runs on cancel too)."""
        if ticket is not None:
            ticket.finish(outcome, completion)
        if not ex.admitted:
            return
        bucket = ex.bucket or "none"
        series = self._series
        ex.outcome = outcome.value
        ex.completion_tokens = completion
        series.finished(bucket, outcome.value).inc()
        if completion:
            series.completion_tokens(bucket).inc(completion)
        if outcome is Outcome.COMPLETED:
            series.e2e_seconds(bucket).observe(self._clock() - ex.started)
