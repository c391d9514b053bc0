"""The completion endpoints: a request's way through the router, one step per module.

    parse (lpu_protocol.openai_api) -> count (lpu_protocol.tokens) -> bucket (buckets)
        -> admit and pick (admission) -> attempts (attempts) -> relay (relay)
        -> finish (one outcome: this module)

The handler only asks and obeys; :class:`~router.attempts.AttemptLoop` owns the attempts, their
tickets and when a request counts as admitted. What the handler keeps is the request's end:
the finished counter by outcome, the token counters, the end-to-end histogram and the access
log line. Every request ends in exactly one of: refused (``requests_rejected``, never
admitted), or admitted and then ``completed`` / ``failed`` / ``cancelled``
(``requests_finished``).

Counting is bounded and often skipped: a prompt whose byte-length bound
(:func:`~lpu_protocol.tokens.prompt_bound`) already fits the model's smallest shape is placed
without a count (:meth:`~router.buckets.BucketTable.settled`), unless its tenant has a
tokens-per-minute limit; the prompt-token counter then takes the backend's
``usage.prompt_tokens`` (counted at the end only when the backend reported none).

The path is lean on purpose (``lpu-bench overhead`` measures it): the body is read once and
forwarded as it came unless the allowance changed, metric children are looked up once per label
set (:mod:`router.series`), and a refusal builds its headers once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Literal

from aiohttp import web

from lpu_protocol.openai_api import APIError, CompletionRequest, check_params, parse_request
from lpu_protocol.tokens import TokenCounter, count_prompt, prompt_bound, prompt_tokens
from router.access_log import Exchange
from router.admission import AdmissionRequest, Admitter, Priority
from router.admission.priority import resolve_priority
from router.admission_headers import ratelimit_headers
from router.attempts import AttemptLoop
from router.auth import Auth
from router.body_rate import LARGE_BODY_BYTES
from router.bucket_config import BucketConfig
from router.buckets import BucketTable, Placement
from router.config import RouterConfig, TenantConfig
from router.edge import REQUEST_ID
from router.errors import Rejection, error_response, retry_after_headers
from router.outcomes import Outcome, RejectReason
from router.relay import RelayResult
from router.series import RequestSeries

__all__ = ["PARSE_OFF_LOOP_BYTES", "Proxy"]

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


class Proxy:
    """The completion handlers, given every collaborator by the composition root."""

    def __init__(self, config: RouterConfig, *, table: BucketTable, counter: TokenCounter,
                 admitter: Admitter, attempts: AttemptLoop, auth: Auth,
                 series: RequestSeries, clock: Callable[[], float]) -> None:
        self._table = table
        self._counter = counter
        self._admitter = admitter
        self._attempts = attempts
        self._auth = auth
        self._series = series
        self._clock = clock
        self._on_demand_max_wait_s = config.admission.on_demand_max_wait_s
        self._metered = frozenset(t.policy.name for t in config.tenants
                                  if t.policy.tokens_per_minute is not None)
        """Tenants with a tokens-per-minute limit: their prompts are always counted."""

    async def handle(self, request: web.Request, kind: Literal["chat", "completion"],
                     path: str) -> web.StreamResponse:
        """``POST path`` (``/v1/chat/completions`` with ``kind="chat"``, ``/v1/completions``
        with ``"completion"``)."""
        ex = Exchange(request_id=request[REQUEST_ID], route=path, started=self._clock(),
                      wall_start=time.time())
        try:
            tenant = self._auth.tenant(request.headers)
            ex.tenant = tenant.policy.name if tenant else None
            try:
                req = await _parse(await request.read(), kind)
            except APIError as exc:
                raise Rejection(RejectReason.INVALID_REQUEST, exc) from None
            ex.model = req.model
            bound = prompt_bound(req)
            placement, counted = await self._place(req, bound, ex.tenant)
            ex.bucket = placement.bucket.name
            ex.prompt_tokens = counted
            try:
                check_params(req, placement.bucket.params)
            except APIError as exc:
                raise Rejection(RejectReason.INVALID_REQUEST, exc) from None
            priority, budget = self._priority(request, req, tenant)
            ex.priority = priority  # a StrEnum is its value (and skips the enum descriptor)
            adm = AdmissionRequest(
                bucket=placement.bucket.name,
                prompt_tokens=counted if counted is not None else bound,
                max_tokens=placement.max_tokens, priority=priority, tenant=ex.tenant,
                wait_budget_s=budget,
                need_tokens=self._table.need(counted if counted is not None else bound))
            return await self._serve(request, ex, req, placement, adm, path)
        except Rejection as r:
            return self._refused(ex, r)
        finally:
            ex.log(self._clock())

    async def _place(self, req: CompletionRequest, bound: int, tenant: str | None
                     ) -> tuple[Placement, int | None]:
        """The bucket and allowance, and the prompt's count when one was needed (None: the
        prompt's upper ``bound`` settled the placement)."""
        if tenant not in self._metered:
            settled = self._table.settled(req.model, bound, req.max_tokens)
            if settled is not None:
                return settled, None
        # Exact up to the model's largest shape, then "at least": bounded work, paced.
        counted = await count_prompt(req, self._counter, self._table.count_limit(req.model))
        placement = self._table.place(req.model, counted.tokens, req.max_tokens,
                                      req.max_tokens_param, at_least=not counted.exact)
        return placement, counted.tokens

    def _priority(self, request: web.Request, req: CompletionRequest,
                  tenant: TenantConfig | None) -> tuple[Priority, float]:
        try:
            return resolve_priority(tenant.policy if tenant else None,
                                    request.headers.get("x-priority"),
                                    req.service_tier,
                                    on_demand_max_wait_s=self._on_demand_max_wait_s)
        except ValueError as exc:
            raise Rejection(RejectReason.INVALID_REQUEST, APIError(
                400, f"Invalid 'x-priority' header: {exc}.", param="x-priority",
                code="invalid_value")) from None

    async def _serve(self, request: web.Request, ex: Exchange, req: CompletionRequest,
                     placement: Placement, adm: AdmissionRequest,
                     path: str) -> web.StreamResponse:
        """The attempts, and the request's end: exactly one outcome once admitted."""
        try:
            result = await self._attempts.run(request, ex, req, placement, adm, path)
        except Rejection:  # never admitted
            raise
        except BaseException as exc:
            if ex.admitted:
                gone = isinstance(exc, asyncio.CancelledError | ConnectionResetError)
                self._finish(ex, req, placement.bucket,
                             Outcome.CANCELLED if gone else Outcome.FAILED)
            raise
        if isinstance(result, RelayResult):
            self._finish(ex, req, placement.bucket, result.outcome, result)
            ex.status = result.response.status
            return result.response
        self._finish(ex, req, placement.bucket, Outcome.FAILED)
        error = result.failure.api_error()
        ex.status = error.status
        ex.reject_reason = result.failure.kind
        return error_response(error, retry_after_headers(result.retry_after_s)
                              | self._limits(ex.tenant))

    def _refused(self, ex: Exchange, r: Rejection) -> web.Response:
        """A request refused before it was admitted: its error, with its headers."""
        ex.reject_reason = r.reason
        ex.status = r.error.status
        self._series.rejected(ex.bucket or "none", ex.priority, r.reason).inc()
        headers = r.headers
        if ex.tenant is not None:
            headers |= self._limits(ex.tenant)
        return error_response(r.error, headers)

    def _limits(self, tenant: str | None) -> dict[str, str]:
        """The tenant's ``x-ratelimit-*`` headers now (none without limits)."""
        return ratelimit_headers(self._admitter.ratelimit(tenant)) if tenant else {}

    def _finish(self, ex: Exchange, req: CompletionRequest, bucket: BucketConfig,
                outcome: Outcome, result: RelayResult | None = None) -> None:
        """Synchronous bookkeeping at the end of an admitted request, once (runs on cancel
        too); ``result``: the backend's answer, when there was one."""
        name = ex.bucket or bucket.name  # the bucket that served it (a spill's larger one)
        series = self._series
        completion = result.completion_tokens if result is not None else None
        reported = result.prompt_tokens if result is not None else None
        ex.outcome = outcome
        ex.completion_tokens = completion
        if reported is not None:
            ex.prompt_tokens = reported
        elif ex.prompt_tokens is None:  # placed by its bound, and the backend said nothing
            ex.prompt_tokens = prompt_tokens(req, self._counter)
        series.prompt_tokens(name).inc(ex.prompt_tokens)
        series.finished(name, outcome).inc()
        if completion:
            series.completion_tokens(name).inc(completion)
        if outcome is Outcome.COMPLETED:
            series.e2e_seconds(name).observe(self._clock() - ex.started)
