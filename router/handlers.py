"""The completion endpoints: a request's way through the router, one step per module.

    parse (openai_api) -> count (tokens) -> bucket (buckets) -> admit (admission)
        -> pick (the admitter's decision) -> relay (relay) -> finish (one outcome)

The handler only asks and obeys. Bookkeeping that both admitters must see identically lives here:
the in-flight gauge, admitted/finished/rejected counters, TTFT and end-to-end histograms, tokens,
the access log line. An admitted request's ticket ends exactly once, in ``finally``.

Retries: when a backend fails before any byte went to the client (connection refused, 5xx, a
429 ``deadline_unreachable``), the admitter is asked again with that replica excluded, at most
``server.max_retries`` times; the failed attempt's ticket ends ``failed`` (freeing its slot).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Literal

from aiohttp import web

from router.access_log import Exchange
from router.admission import AdmissionRequest, Admitter, Ticket
from router.admission.priority import resolve_priority
from router.auth import Auth
from router.buckets import BucketTable, Placement
from router.config import RouterConfig
from router.errors import Rejection, UpstreamFailure, refusal_error, retry_after_headers
from router.metrics import RouterMetrics
from router.openai_api import APIError, CompletionRequest, parse_request
from router.outcomes import Outcome, RejectReason
from router.pool import BackendPool
from router.relay import RelayResult, Upstream, relay, request_headers
from router.tokens import TokenCounter, prompt_tokens

__all__ = ["Proxy", "error_response"]

REQUEST_ID = web.RequestKey("request_id", str)


def error_response(error: APIError, headers: dict[str, str] | None = None) -> web.Response:
    """An OpenAI-shaped JSON error."""
    return web.Response(status=error.status, body=error.to_json(), headers=headers,
                        content_type="application/json")


class Proxy:
    """The completion handlers, given every collaborator by the composition root."""

    def __init__(self, config: RouterConfig, *, table: BucketTable, counter: TokenCounter,
                 admitter: Admitter, pool: BackendPool, upstream: Upstream, auth: Auth,
                 metrics: RouterMetrics, clock: Callable[[], float]) -> None:
        self._config = config
        self._table = table
        self._counter = counter
        self._admitter = admitter
        self._pool = pool
        self._upstream = upstream
        self._auth = auth
        self._metrics = metrics
        self._clock = clock
        self._tenants = {t.policy.name: t.policy for t in config.tenants}

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
                req = parse_request(raw, kind)
            except APIError as exc:
                raise Rejection(RejectReason.INVALID_REQUEST, exc) from None
            ex.model = req.model
            ex.prompt_tokens = prompt_tokens(req, self._counter)
            placement = self._table.place(req.model, ex.prompt_tokens, req.max_tokens,
                                          req.max_tokens_param)
            ex.bucket = placement.bucket.name
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
            return await self._serve(request, ex, req, placement, adm, path)
        except Rejection as r:
            ex.reject_reason = r.reason.value
            ex.status = r.error.status
            self._metrics.requests_rejected.labels(ex.bucket or "none", ex.priority,
                                                   r.reason.value).inc()
            return error_response(r.error, retry_after_headers(r.retry_after_s))
        finally:
            ex.log(self._clock())

    async def _serve(self, request: web.Request, ex: Exchange, req: CompletionRequest,
                     placement: Placement, adm: AdmissionRequest,
                     path: str) -> web.StreamResponse:
        m = self._metrics
        bucket = placement.bucket.name
        exclude: set[str] = set()
        ticket: Ticket | None = None
        outcome = Outcome.FAILED
        completion: int | None = None
        last: UpstreamFailure | None = None
        try:
            for attempt in range(self._config.server.max_retries + 1):
                decision = self._admitter.decide(adm, frozenset(exclude))
                if not decision.admitted or decision.ticket is None or decision.backend is None:
                    reason = decision.reason or RejectReason.NO_BACKEND
                    if ex.admitted:
                        break
                    raise Rejection(reason, refusal_error(reason, decision.message),
                                    decision.retry_after_s)
                if not ex.admitted:
                    ex.admitted = True
                    m.requests_admitted.labels(bucket, adm.priority.value).inc()
                    m.prompt_tokens.labels(bucket).inc(adm.prompt_tokens)
                    if placement.clamped_from is not None:
                        m.clamped.labels(bucket, "bucket_cap").inc()
                if decision.degraded:
                    m.clamped.labels(bucket, "degraded").inc()
                if attempt:
                    m.retries.labels(bucket).inc()
                ticket, backend = decision.ticket, decision.backend
                ex.backend = backend
                ex.predicted_ttft_ms = decision.predicted_ttft_s * 1e3
                m.in_flight.labels(bucket, backend).inc()
                try:
                    result = await self._attempt(request, ex, req, placement, decision.max_tokens,
                                                 decision.deadline_s, backend, ticket, path)
                except UpstreamFailure as f:
                    last = f
                    self._upstream_failed(bucket, backend, f)
                    if not f.retryable:
                        break
                    exclude.add(backend)
                    ticket.finish(Outcome.FAILED)
                    ticket = None
                    continue
                finally:
                    m.in_flight.labels(bucket, backend).dec()
                self._pool.report_success(bucket, backend) if result.failure is None else \
                    self._upstream_failed(bucket, backend, result.failure)
                outcome, completion = result.outcome, result.completion_tokens
                ex.status = result.response.status
                return result.response
            assert last is not None or not ex.admitted
            error = last.api_error() if last is not None else refusal_error(
                RejectReason.NO_BACKEND, "")
            ex.status = error.status
            ex.reject_reason = last.kind if last is not None else None
            return error_response(error)
        except (asyncio.CancelledError, ConnectionResetError):
            outcome = Outcome.CANCELLED
            raise
        finally:
            self._finish(ex, ticket, outcome, completion)

    async def _attempt(self, request: web.Request, ex: Exchange, req: CompletionRequest,
                       placement: Placement, max_tokens: int, deadline_s: float | None,
                       backend: str, ticket: Ticket, path: str) -> RelayResult:
        body = req.body
        if req.max_tokens != max_tokens:
            body = dict(body)
            body[req.max_tokens_param or "max_tokens"] = max_tokens
        raw = json.dumps(body, separators=(",", ":")).encode() if body is not req.body \
            else await request.read()
        headers = request_headers(request.headers)
        headers["x-request-id"] = ex.request_id
        headers["Content-Type"] = "application/json"
        if deadline_s is not None:
            headers["x-lpu-deadline-ms"] = str(max(0, round(deadline_s * 1e3)))
        upstream = await self._upstream.open(backend + path, raw, headers)
        try:
            own = {"x-request-id": ex.request_id, "x-lpu-bucket": placement.bucket.name,
                   "x-lpu-max-tokens": str(max_tokens)}
            if placement.clamped_from is not None:
                own["x-lpu-max-tokens-clamped-from"] = str(placement.clamped_from)

            def first_byte() -> None:
                ticket.first_token()
                ex.ttft_s = self._clock() - ex.started
                self._metrics.ttft_seconds.labels(placement.bucket.name).observe(ex.ttft_s)

            return await relay(request, upstream, own, first_byte)
        finally:
            # Unread content means the client left or the stream broke: drop the connection
            # so the backend sees the cancel at once.
            upstream.close()

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
        m = self._metrics
        ex.outcome = outcome.value
        ex.completion_tokens = completion
        m.requests_finished.labels(bucket, outcome.value).inc()
        if completion:
            m.completion_tokens.labels(bucket).inc(completion)
        if outcome is Outcome.COMPLETED:
            m.e2e_seconds.labels(bucket).observe(self._clock() - ex.started)
