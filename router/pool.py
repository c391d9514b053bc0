"""Backend pools: every bucket's replicas and whether each may be used now.

This module owns the state; the checks that feed it run elsewhere. A replica is *up* when its last
active check succeeded and it is not ejected:

* active checks (:mod:`router.load_poller`, the same in both admission modes): each backend URL is
  checked on the path :mod:`router.probe` found for it (``/load``, else ``/readyz``, ``/health``
  or ``/v1/models``) and the result arrives through :meth:`BackendPool.set_probe_url`, for every
  bucket the URL serves: a failed check marks it down at once, a good one up again;
* passive ejection: ``health.eject_after_failures`` consecutive failed requests (connection
  errors, timeouts, 5xx; not a deadline refusal) eject it for ``health.eject_for_s`` seconds,
  after which it is used again (recovery) unless a check says otherwise. Any success resets the
  count.

Identity (:mod:`router.identity`): each ``/load`` report's artifact identity arrives through
:meth:`BackendPool.set_identity` and is kept on the replica (``lpu_router_backend_artifact_info``,
the declared timings in ``lpu_router_backend_declared_seconds``). A replica whose reported shape
does not fit its bucket (:func:`router.identity.shape_mismatch`) is not up while it does not
(``mismatch`` says why; ``lpu_router_backend_shape_mismatch`` is 1; logged once per change).

Replicas start up (optimistically) and are checked at once. The pool is the one owner of
health: admission reads each replica's :class:`Replica` (:meth:`BackendPool.replica`), never a
copy. Every change of state is published to the ``lpu_router_backend_up`` and
``lpu_router_slots`` gauges (and to ``on_change(bucket, url, up)``, when given, for an observer).
Time comes from the injected ``clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lpu_protocol.load_report import LoadReport
from router.bucket_config import BucketConfig
from router.config import HealthConfig
from router.identity import ReplicaIdentity, shape_mismatch
from router.metrics import RouterMetrics

__all__ = ["BackendPool", "Replica"]

log = logging.getLogger("lpu_router.pool")


@dataclass(slots=True)
class Replica:
    bucket: str
    url: str
    probe_ok: bool = True
    failures: int = 0
    """Consecutive failed requests (passive health)."""
    ejected_until: float = 0.0
    up: bool = True
    """State last published (probe_ok, not ejected and no shape mismatch)."""
    identity: ReplicaIdentity | None = None
    """What the replica last reported it serves (None: no /load report yet)."""
    mismatch: str | None = None
    """Why the reported shape does not fit the bucket (None: it fits or is not reported)."""


class BackendPool:
    """Health of every (bucket, replica) pair."""

    def __init__(self, buckets: Sequence[BucketConfig], health: HealthConfig, *,
                 clock: Callable[[], float], metrics: RouterMetrics,
                 on_change: Callable[[str, str, bool], None] | None = None) -> None:
        self._health = health
        self._clock = clock
        self._metrics = metrics
        self._on_change = on_change
        self._replicas = {
            (b.name, url): Replica(b.name, url) for b in buckets for url in b.backends
        }
        self._buckets = {b.name: b.backends for b in buckets}
        self._configs = {b.name: b for b in buckets}
        self._slots = {(b.name, s.url): s.slots for b in buckets for s in b.policy.replicas}
        for r in self._replicas.values():
            metrics.backend_up.labels(r.bucket, r.url).set(1)
            metrics.backend_shape_mismatch.labels(r.bucket, r.url).set(0)
        for b in buckets:
            self._publish_slots(b.name)

    def replica(self, bucket: str, url: str) -> Replica:
        """The health record of one replica (its ``up`` is current; admission reads it)."""
        return self._replicas[(bucket, url)]

    def _publish_slots(self, bucket: str) -> None:
        self._metrics.slots.labels(bucket).set(sum(
            self._slots.get((bucket, url), 0) for url in self._buckets[bucket]
            if self._replicas[(bucket, url)].up))

    def replicas(self, bucket: str) -> tuple[Replica, ...]:
        return tuple(self._replicas[(bucket, url)] for url in self._buckets[bucket])

    def is_up(self, bucket: str, url: str) -> bool:
        self.refresh()
        return self._replicas[(bucket, url)].up

    def ready(self) -> dict[str, int]:
        """Replicas up per bucket."""
        self.refresh()
        return {
            b: sum(self._replicas[(b, u)].up for u in urls) for b, urls in self._buckets.items()
        }

    def report_success(self, bucket: str, url: str) -> None:
        self._replicas[(bucket, url)].failures = 0

    def report_failure(self, bucket: str, url: str) -> None:
        """A request to this replica failed in a way that counts against its health."""
        r = self._replicas[(bucket, url)]
        r.failures += 1
        if r.failures >= self._health.eject_after_failures:
            r.failures = 0
            r.ejected_until = self._clock() + self._health.eject_for_s
            log.warning("ejecting %s from bucket %s for %.1fs after %d failures", url, bucket,
                        self._health.eject_for_s, self._health.eject_after_failures)
            # Publish the recovery when the ejection ends, not at the next probe round.
            with contextlib.suppress(RuntimeError):  # no running loop (unit tests)
                asyncio.get_running_loop().call_later(self._health.eject_for_s + 1e-3,
                                                      self.refresh)
        self.refresh()

    def set_probe(self, bucket: str, url: str, ok: bool) -> None:
        self._replicas[(bucket, url)].probe_ok = ok
        self.refresh()

    def urls(self) -> list[str]:
        """Every backend URL once (a URL may serve several buckets), sorted."""
        return sorted({url for _, url in self._replicas})

    def buckets_of(self, url: str) -> list[str]:
        """The buckets ``url`` serves, in config order."""
        return [b for b, urls in self._buckets.items() if url in urls]

    def set_probe_url(self, url: str, ok: bool) -> None:
        """The result of an active check of ``url``, for every bucket it serves."""
        for r in self._replicas.values():
            if r.url == url:
                r.probe_ok = ok
        self.refresh()

    def set_identity(self, url: str, report: LoadReport) -> None:
        """The identity in a ``/load`` report of ``url``, for every bucket it serves."""
        identity = ReplicaIdentity.of(report)
        for r in self._replicas.values():
            if r.url == url and r.identity != identity:
                self._set_identity(r, identity)
        self.refresh()

    def _set_identity(self, r: Replica, identity: ReplicaIdentity) -> None:
        m = self._metrics
        if r.identity is not None and r.identity.info_labels != identity.info_labels:
            old = (r.bucket, r.url, *r.identity.info_labels)
            m.backend_artifact_info.labels(*old).set(0)  # what a worker's file keeps
            m.backend_artifact_info.remove(*old)
        r.identity = identity
        m.backend_artifact_info.labels(r.bucket, r.url, *identity.info_labels).set(1)
        m.backend_declared_seconds.labels(r.bucket, r.url, "prefill").set(identity.prefill_s)
        m.backend_declared_seconds.labels(r.bucket, r.url, "per_token").set(
            identity.per_token_s)
        mismatch = shape_mismatch(identity, self._configs[r.bucket])
        if mismatch != r.mismatch:
            r.mismatch = mismatch
            m.backend_shape_mismatch.labels(r.bucket, r.url).set(0 if mismatch is None else 1)
            if mismatch is None:
                log.info("backend %s in bucket %s reports a fitting shape again (%s %s)",
                         r.url, r.bucket, identity.artifact, identity.version)
            else:
                log.warning("backend %s in bucket %s is not admitted to: its artifact %s %s"
                            " does not fit the bucket's shape: %s", r.url, r.bucket,
                            identity.artifact, identity.version, mismatch)

    def refresh(self) -> None:
        """Publish every replica whose state changed (ejections expire with time)."""
        now = self._clock()
        for r in self._replicas.values():
            up = r.probe_ok and now >= r.ejected_until and r.mismatch is None
            if up != r.up:
                r.up = up
                self._metrics.backend_up.labels(r.bucket, r.url).set(1 if up else 0)
                log.info("backend %s in bucket %s is %s", r.url, r.bucket, "up" if up else "down")
                self._publish_slots(r.bucket)
                if self._on_change is not None:
                    self._on_change(r.bucket, r.url, up)
