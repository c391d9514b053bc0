"""The shared limits in the request path: ask the store once the local decision admitted.

:meth:`SharedLimits.admit` is called by the attempt loop with a request the local admitter just
admitted. The local decision already passed the SLO (a refusal there never touches Redis, the
cheapest path stays cheap) and the local caps (a process's own counts are part of the pod's, so
they never refuse what the pod would admit). The store then checks and charges, in one step,
what only the pod can count: the tenant's request and token windows and the bucket's pod-wide
concurrency and queue. Over a limit, the local reservation is withdrawn (the request ends as
never admitted, like any refusal) and a :class:`~router.errors.Rejection` is raised: 429 with
the reason (``tenant_rpm``, ``tenant_tpm``, ``concurrency``, ``queue_full``) and
``Retry-After``.

When the store does not answer (an error, or no answer within ``limits.timeout_ms``), the
request follows ``limits.on_store_error``: ``open`` admits it on the local decision alone,
``closed`` refuses it with 503 ``limits_unavailable``. After an error the store is not asked for
``limits.backoff_s``; then one request probes it (the others meanwhile follow the policy at
once), so a store that is down costs no timeout per request.

A request the store counts gets a :class:`Hold`; :meth:`SharedLimits.end` gives it back when
the request ends: the lease and unused tokens when it was admitted, the whole charge when it
never was. Neither is awaited.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from router.admission import AdmissionRequest, Admitted, Admitter, Decision, RateLimitState
from router.admission.priority import rule_table, scaled_cap
from router.admission.ratelimit import over_message
from router.admission.settings import AdmissionSettings, ReplicaShape, TenantPolicy
from router.admission.spill import spill_targets
from router.admission_headers import ratelimit_headers, refusal_headers
from router.errors import Rejection, refusal_error
from router.limits import Ask, StoreError, Verdict
from router.limits.settings import LimitsConfig, OnStoreError, StoreKind
from router.metrics import RouterMetrics
from router.outcomes import Outcome, RejectReason

if TYPE_CHECKING:  # the client library is imported only where a store is made (router.app)
    from router.limits.redis_store import RedisStore

__all__ = ["Hold", "RequestCharge", "SharedLimits", "SharedRateLimits", "shared_limits"]


@dataclasses.dataclass(slots=True)
class Hold:
    """What a request holds in the store until it ends."""

    ask: Ask
    max_tokens: int
    """The allowance charged (the part of the token charge a short answer gives back)."""
    ratelimit: RateLimitState | None
    """The tenant's numbers right after the charge (the admitted response's headers)."""


class SharedLimits:
    """The policy around the store: what to ask, what to do when it does not answer."""

    def __init__(self, store: RedisStore, config: LimitsConfig, settings: AdmissionSettings, *,
                 metrics: RouterMetrics, clock: Callable[[], float]) -> None:
        self.store = store
        self._config = config
        self._clock = clock
        self._min_retry = settings.min_retry_after_s
        self._rules = rule_table(settings.priorities)
        self._tenants = {t.name: t for t in settings.tenants
                         if t.requests_per_minute is not None or t.tokens_per_minute is not None}
        self._buckets = {b.name: b for b in settings.buckets
                         if b.max_concurrency is not None or b.max_queue is not None}
        # A request of a bucket that spills into a capped one may be charged there.
        self._spill_capped = {b.name for b in settings.buckets
                              if any(t.target.name in self._buckets
                                     for t in spill_targets(b, settings.buckets))}
        self._shapes: dict[tuple[str, str], ReplicaShape] = {
            (b.name, r.url): r for b in settings.buckets for r in b.replicas}
        self._last: dict[str, tuple[RateLimitState, float]] = {}
        self._down_until = -math.inf
        self._probing = False
        calls, errors = metrics.limit_store_calls, metrics.limit_store_errors
        self._ok, self._over, self._error = (calls.labels(r) for r in ("ok", "over", "error"))
        self._errors = {k: errors.labels(k) for k in ("timeout", "connection", "script")}
        self._up = metrics.limit_store_up
        self._up.set(1)

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """The store's pool for the application's life (a ``cleanup_ctx``): made in the running
        loop, closed after the ends still queued were sent."""
        await self.store.start()
        yield
        await self.store.aclose()

    @property
    def up(self) -> bool:
        """False while backing off after an error."""
        return self._clock() >= self._down_until

    def counts(self, tenant: str | None, bucket: str) -> bool:
        """Whether the store counts anything of a request of ``tenant`` in ``bucket``."""
        return ((tenant is not None and tenant in self._tenants) or bucket in self._buckets
                or bucket in self._spill_capped)

    async def admit(self, adm: AdmissionRequest, decision: Admitted) -> Hold | None:
        """Charge the locally admitted request in the store (see the module docstring).

        Returns its :class:`Hold`, or None when the store counts nothing of it or did not
        answer and ``on_store_error = "open"``. Raises :class:`Rejection` (the decision's ticket
        withdrawn first) when a limit is over, or the store did not answer and the policy is
        ``closed``."""
        ask = self._ask(adm, decision)
        if ask is None:
            return None
        policy = self._tenants.get(adm.tenant) if adm.tenant is not None else None
        tpm = policy.tokens_per_minute if policy is not None else None
        if policy is not None and tpm is not None and ask.cost_tokens > tpm:
            # It can never fit: refused here, the store is not asked.
            reason = RejectReason.TENANT_TPM
            decision.ticket.withdraw(reason)
            raise self._rejection(reason, over_message(policy, reason, math.inf,
                                                       ask.cost_tokens), 60.0, adm.tenant)
        now = self._clock()
        if now < self._down_until or self._probing:
            self._unavailable(decision, now)
            return None
        self._probing = now > self._down_until > -math.inf  # the first ask after a back-off
        try:
            verdict = await self.store.admit(ask)
        except StoreError as exc:
            self._failed(exc, ask)
            self._unavailable(decision, self._clock())
            return None
        except BaseException:  # cancelled (the client left) while the store had it
            self.store.refund(ask)
            decision.ticket.finish(Outcome.CANCELLED)  # never admitted: nothing is counted
            raise
        finally:
            self._probing = False
        if self._down_until > -math.inf:
            self._down_until = -math.inf
            self._up.set(1)
        state = self._state(policy, verdict)
        if verdict.over is None:
            self._ok.inc()
            return Hold(ask, decision.terms.max_tokens, state)
        self._over.inc()
        reason = verdict.over
        decision.ticket.withdraw(reason)
        retry = max(verdict.retry_after_s, self._min_retry)
        if policy is not None and reason in (RejectReason.TENANT_RPM, RejectReason.TENANT_TPM):
            message = over_message(policy, reason, retry, ask.cost_tokens)
        else:
            message = self._cap_message(adm, ask, verdict, reason, retry)
        raise self._rejection(reason, message, retry, adm.tenant)

    def end(self, hold: Hold, *, admitted: bool, completion_tokens: int | None) -> None:
        """The request ended: admitted (lease and unused tokens back) or never (all back)."""
        ask = hold.ask
        if not admitted:
            self.store.refund(ask)
            return
        unused = 0
        if completion_tokens is not None and ask.tokens_per_minute is not None:
            unused = hold.max_tokens - completion_tokens
        self.store.finish(ask, unused)

    def ratelimit(self, tenant: str | None) -> RateLimitState | None:
        """The tenant's ``x-ratelimit-*`` numbers as of the store's last answer for it (the
        resets counted down since; a window whose every charge has left is whole again)."""
        policy = self._tenants.get(tenant) if tenant is not None else None
        if policy is None:
            return None
        assert tenant is not None
        seen = self._last.get(tenant)
        if seen is None:
            return _whole(policy)
        state, at = seen
        age = self._clock() - at
        rq_reset = state.reset_requests_s - age
        tk_reset = state.reset_tokens_s - age
        return RateLimitState(
            limit_requests=state.limit_requests,
            remaining_requests=state.limit_requests if rq_reset <= 0 else state.remaining_requests,
            reset_requests_s=max(0.0, rq_reset),
            limit_tokens=state.limit_tokens,
            remaining_tokens=state.limit_tokens if tk_reset <= 0 else state.remaining_tokens,
            reset_tokens_s=max(0.0, tk_reset),
        )

    def _ask(self, adm: AdmissionRequest, decision: Admitted) -> Ask | None:
        policy = self._tenants.get(adm.tenant) if adm.tenant is not None else None
        name = decision.bucket or adm.bucket  # a spilled request is charged where it went
        bucket = self._buckets.get(name)
        if policy is None and bucket is None:
            return None
        terms = decision.terms
        share = self._rules[adm.priority].share
        shape = self._shapes[name, decision.backend]
        wait = decision.predicted_wait_s
        return Ask(
            member=self.store.new_member(),
            tenant=adm.tenant if policy is not None else None,
            requests_per_minute=policy.requests_per_minute if policy is not None else None,
            tokens_per_minute=policy.tokens_per_minute if policy is not None else None,
            cost_tokens=adm.prompt_tokens + terms.max_tokens,
            bucket=name,
            max_concurrency=scaled_cap(bucket.max_concurrency, share) if bucket else None,
            max_queue=scaled_cap(bucket.max_queue, share) if bucket else None,
            wait_s=wait,
            lease_s=wait + shape.service_time(max(1, terms.max_tokens)) + self.store.grace_s,
        )

    def _failed(self, exc: StoreError, ask: Ask) -> None:
        self._error.inc()
        self._errors[exc.kind].inc()
        self._down_until = self._clock() + self._config.backoff_s
        self._up.set(0)
        # A timeout may have charged it after all: take that back (a no-op if not).
        self.store.refund(ask)

    def _unavailable(self, decision: Admitted, now: float) -> None:
        """The store is not answering: the policy decides (returns: admitted locally)."""
        if self._config.on_store_error is OnStoreError.OPEN:
            return
        reason = RejectReason.LIMITS_UNAVAILABLE
        decision.ticket.withdraw(reason)
        retry = max(self._down_until - now, self._min_retry)
        message = ("The router's shared limits store is not answering and"
                   f" limits.on_store_error is \"closed\"; retry in {retry:.2f} s")
        raise Rejection(reason, refusal_error(reason, message), retry,
                        refusal_headers(reason, retry))

    def _state(self, policy: TenantPolicy | None, v: Verdict) -> RateLimitState | None:
        if policy is None:
            return None
        rpm, tpm = policy.requests_per_minute, policy.tokens_per_minute
        state = RateLimitState(
            limit_requests=rpm,
            remaining_requests=max(0, rpm - v.requests_used) if rpm is not None else None,
            reset_requests_s=v.requests_reset_s if rpm is not None else 0.0,
            limit_tokens=tpm,
            remaining_tokens=max(0, tpm - v.tokens_used) if tpm is not None else None,
            reset_tokens_s=v.tokens_reset_s if tpm is not None else 0.0,
        )
        self._last[policy.name] = (state, self._clock())
        return state

    def _rejection(self, reason: RejectReason, message: str, retry: float,
                   tenant: str | None) -> Rejection:
        headers = refusal_headers(reason, retry) | ratelimit_headers(self.ratelimit(tenant))
        return Rejection(reason, refusal_error(reason, message), retry, headers)

    @staticmethod
    def _cap_message(adm: AdmissionRequest, ask: Ask, v: Verdict, reason: RejectReason,
                     retry: float) -> str:
        if reason is RejectReason.CONCURRENCY:
            what = (f"{v.in_flight} requests in flight across the router's processes, the limit"
                    f" for {adm.priority} requests is {ask.max_concurrency}")
        else:
            what = (f"{v.queued} requests queued across the router's processes, the limit for"
                    f" {adm.priority} requests is {ask.max_queue}")
        return f"bucket '{ask.bucket}' is at capacity: {what}; retry in {retry:.3f} s"


def _whole(policy: TenantPolicy) -> RateLimitState:
    rpm, tpm = policy.requests_per_minute, policy.tokens_per_minute
    return RateLimitState(rpm, rpm, 0.0, tpm, tpm, 0.0)


def shared_limits(config: LimitsConfig, settings: AdmissionSettings, *, metrics: RouterMetrics,
                  clock: Callable[[], float]) -> SharedLimits | None:
    """The shared limits of ``store = "redis"``; None with ``memory`` (counted in process)."""
    if config.store is not StoreKind.REDIS:
        return None
    from router.limits.redis_store import RedisStore

    assert config.redis_url is not None, "the config requires redis_url with redis"
    store = RedisStore(config.redis_url, key_prefix=config.key_prefix,
                       timeout_s=config.timeout_s)
    return SharedLimits(store, config, settings, metrics=metrics, clock=clock)


class RequestCharge:
    """One request's part in the shared limits: asked once, on its first admitted attempt
    (a retry on another replica of the bucket keeps the charge), given back once at its end."""

    __slots__ = ("_asked", "_limits", "hold")

    def __init__(self, limits: SharedLimits) -> None:
        self._limits = limits
        self._asked = False
        self.hold: Hold | None = None

    async def admit(self, adm: AdmissionRequest, decision: Admitted) -> Admitted:
        """The decision, charged in the store (:meth:`SharedLimits.admit`; raises
        :class:`Rejection` the same way), with the tenant's shared numbers for its headers."""
        if not self._asked:
            self._asked = True
            self.hold = await self._limits.admit(adm, decision)
        hold = self.hold
        if hold is None or hold.ratelimit is None:
            return decision
        return dataclasses.replace(decision, ratelimit=hold.ratelimit)

    def end(self, *, admitted: bool, completion_tokens: int | None) -> None:
        if self.hold is not None:
            self._limits.end(self.hold, admitted=admitted, completion_tokens=completion_tokens)
            self.hold = None


class SharedRateLimits:
    """An :class:`~router.admission.Admitter` whose ``ratelimit`` numbers are the shared
    store's (the local admitter counts no tenant with ``store = "redis"``); everything else is
    the local admitter's. What the completion handlers get to write ``x-ratelimit-*``."""

    def __init__(self, admitter: Admitter, limits: SharedLimits) -> None:
        self._admitter = admitter
        self._limits = limits

    def decide(self, req: AdmissionRequest, exclude: frozenset[str] = frozenset()) -> Decision:
        return self._admitter.decide(req, exclude)

    def ratelimit(self, tenant: str | None) -> RateLimitState | None:
        return self._limits.ratelimit(tenant)

    def in_flight(self, bucket: str, backend: str) -> int:
        return self._admitter.in_flight(bucket, backend)

    def snapshot(self) -> dict[str, Any]:
        return self._admitter.snapshot()
