"""The ``[limits]`` table: where tenant limits and bucket caps are counted.

Frozen values that :mod:`router.config` builds; the defaults are these fields (the parser reads
them from here, never again). Every field is documented in ``router/example.toml`` and in
docs/router.md, "Limits across processes".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from router.admission.settings import BucketPolicy, TenantPolicy
from router.config_fields import Fields

__all__ = ["REDIS_URL_SCHEMES", "LimitsConfig", "OnStoreError", "StoreKind", "parse_limits",
           "scale_problems"]

REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")


class StoreKind(StrEnum):
    MEMORY = "memory"
    """In the process: every worker and every replica counts on its own (no dependency)."""
    REDIS = "redis"
    """One count for every process that shares the Redis server (:mod:`router.limits`)."""


class OnStoreError(StrEnum):
    OPEN = "open"
    """Redis slow or down: admit on the local decision alone (the SLO still holds; tenant
    limits and pod-wide caps do not, until Redis answers again)."""
    CLOSED = "closed"
    """Redis slow or down: refuse with 503 ``limits_unavailable`` and ``Retry-After``."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    store: StoreKind = StoreKind.MEMORY
    redis_url: str | None = None
    """``redis://host:port/db`` (also ``rediss://``, ``unix://``); required with ``redis``."""
    on_store_error: OnStoreError = OnStoreError.OPEN
    timeout_ms: float = 25.0
    """The longest a request waits for Redis (milliseconds); slower counts as an error."""
    key_prefix: str = "lpu:"
    """Prepended to every key the router writes, so several deployments can share a server."""
    backoff_s: float = 1.0
    """After an error, Redis is not asked for this long (seconds); then one request probes."""

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1e3


def parse_limits(f: Fields) -> LimitsConfig:
    """The ``[limits]`` table (every problem appended to ``f``'s errors, with its key)."""
    store = StoreKind(f.choice("store", [s.value for s in StoreKind], _DEFAULT.store.value))
    url = f.opt_str("redis_url")
    if url is not None and not url.startswith(REDIS_URL_SCHEMES):
        f.error("redis_url", f"expected a URL starting with {', '.join(REDIS_URL_SCHEMES)},"
                f" got {url!r}")
    if store is StoreKind.REDIS and url is None:
        f.error("redis_url", 'required with store = "redis" (e.g. "redis://127.0.0.1:6379/0")')
    prefix = f.string("key_prefix", _DEFAULT.key_prefix)
    if not prefix:
        f.error("key_prefix", "must not be empty")
    cfg = LimitsConfig(
        store=store,
        redis_url=url,
        on_store_error=OnStoreError(f.choice("on_store_error", [o.value for o in OnStoreError],
                                             _DEFAULT.on_store_error.value)),
        timeout_ms=f.number("timeout_ms", _DEFAULT.timeout_ms, lo=1.0, hi=10_000.0),
        key_prefix=prefix or _DEFAULT.key_prefix,
        backoff_s=f.number("backoff_s", _DEFAULT.backoff_s, lo=0.0, hi=60.0),
    )
    f.finish()
    return cfg


def scale_problems(limits: LimitsConfig, workers: int, tenants: Iterable[TenantPolicy],
                   buckets: Iterable[BucketPolicy]) -> tuple[list[str], list[str]]:
    """(errors, warnings) of counting in memory with several worker processes: a tenant's
    per-minute limit would be multiplied by the workers (an error), a bucket's caps would hold
    per worker (a warning)."""
    if limits.store is not StoreKind.MEMORY or workers <= 1:
        return [], []
    errors = [f'limits.store: tenant \'{t.name}\' has a per-minute limit and server.workers is'
              f' {workers}: with store = "memory" each worker counts on its own (the tenant'
              f' would get {workers} times its limit); use store = "redis" and limits.redis_url'
              for t in tenants
              if t.requests_per_minute is not None or t.tokens_per_minute is not None]
    warnings = [f"buckets.{b.name}: max_queue / max_concurrency hold per worker with"
                f' limits.store = "memory" and server.workers = {workers} (the pod admits up to'
                f' {workers} times them); limits.store = "redis" makes them pod-wide'
                for b in buckets if b.max_queue is not None or b.max_concurrency is not None]
    return errors, warnings


_DEFAULT = LimitsConfig()
