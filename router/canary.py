"""A bucket's canary of a compiled artifact: the split, the per-version comparison, the rollback.

A bucket names its ``stable_version`` and optionally a canary (``[buckets.canary]``: the
artifact version, its traffic ``share`` and the bounds). :class:`Canary` owns that state for one
bucket and one worker process:

* **Split** (:meth:`Canary.route`): deterministic, never random. The bucket's admitted requests
  are numbered 0, 1, 2, ...; request ``n`` is the canary's when ``floor((n + 1) * share)`` exceeds
  ``floor(n * share)`` (exact in rationals), so at share 0.1 every tenth admitted request goes to
  a replica reporting the canary version and the others to replicas that do not. While no
  replica reports the canary version the due request goes to a stable one (the count moves on).
* **Comparison** (:meth:`Canary.first_token`, :meth:`Canary.ended`): per role (stable, canary)
  the requests ended, failed, the TTFT prediction errors (actual minus predicted, ms) and how many
  first tokens met the bucket's TTFT SLO.
* **Observed timings** (:meth:`Canary.observed_timing`): per role, each replica's latest
  observed prefill and per-token estimate (:mod:`router.drift`, the median of its streams) and
  its sample count; a role's estimate is their sample-weighted mean.
* **Judge**, each bound after ``min_requests`` canary requests (first tokens; ended requests
  for the error rate; samples of the timing, on both roles, for the timings):

  - the ``error_quantile`` (p90) of the canary's prediction errors above
    ``max_prediction_error_ms``;
  - its SLO attainment (share of first tokens within the TTFT SLO) below
    ``min_slo_attainment`` (None: not judged);
  - its failed share above ``max_error_rate``;
  - its observed prefill or per-token time above the stable role's by more than
    ``max_timing_drift`` (relative; None: not judged). Against the stable replicas' own
    observation, not the declared figure: the router's and the network's share of the reading
    is in both, so a canary that runs as the stable does never trips it.

  Any one rolls the canary back: no request goes to the canary version until
  :meth:`Canary.clear` (an operator's call) starts a fresh comparison. :meth:`Canary.promote`
  makes the canary version the stable one.

Bound, stated from the rule: with every canary error beyond the bound, the rollback comes at the
``min_requests``-th canary first token, so at most ``min_requests`` plus the canary requests in
flight then (at most the canary replicas' slots plus their queues) reach the canary.

Not thread-safe; one per bucket per worker: with ``server.workers`` > 1 each worker judges its
own share of the traffic, and the outcome (a rollback, a clear, a promotion) is pod-wide through
:mod:`router.canary_shared` (every worker follows within its poll, ~0.1 s).
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bucket_config reads CanaryConfig from here
    from router.bucket_config import BucketConfig
    from router.metrics import RouterMetrics

__all__ = ["Canary", "CanaryConfig", "CanaryState", "Role", "make_canaries", "quantile",
           "verdict"]

_KEEP = 4096
"""Prediction errors kept per role (the latest): the judge's quantile reads them."""


class Role(StrEnum):
    """Which side of the split a request went to (a metric label: bounded)."""

    STABLE = "stable"
    CANARY = "canary"


class CanaryState(StrEnum):
    """The canary's state, as ``/admin/buckets`` shows it."""

    NONE = "none"
    """No canary configured (or promoted): every replica takes any request."""
    ACTIVE = "active"
    ROLLED_BACK = "rolled_back"
    """Beyond the bounds: no request goes to the canary version until cleared."""


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    """``[buckets.canary]``: the canary version, its share and the bounds that roll it back."""

    version: str
    """The artifact version the canary replicas report on ``/load``."""
    share: float = 0.1
    """Share of the bucket's admitted requests sent to the canary, in (0, 1)."""
    max_prediction_error_ms: float = 10.0
    """Bound on the ``error_quantile`` of the canary's actual minus predicted TTFT (ms)."""
    max_error_rate: float = 0.05
    """Bound on the share of ended canary requests that failed."""
    min_requests: int = 20
    """Canary requests (first tokens; ended, for the error rate) before judging."""
    error_quantile: float = 0.9
    """Which quantile of the prediction errors is bounded (0.9: p90)."""
    min_slo_attainment: float | None = None
    """Bound: the canary's share of first tokens within the bucket's TTFT SLO, at least this
    (None: not judged)."""
    max_timing_drift: float | None = None
    """Bound: the canary's observed prefill and per-token times over the stable replicas',
    minus 1, at most this (0.05: 5 % slower; None: not judged)."""


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank, the smallest value with at least ``q``
    of the values at or below it); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class _Stats:
    __slots__ = ("ended", "errors_ms", "failed", "first_tokens", "slo_met", "timings")

    def __init__(self) -> None:
        self.first_tokens = 0
        self.slo_met = 0
        self.ended = 0
        self.failed = 0
        self.errors_ms: deque[float] = deque(maxlen=_KEEP)
        self.timings: dict[str, dict[str, tuple[float, int]]] = {}
        """timing -> backend -> (its latest observed estimate, seconds; its samples)."""

    def timing(self, timing: str) -> tuple[float, int] | None:
        """The role's estimate of ``timing`` (sample-weighted mean over its replicas) and the
        samples behind it; None before any."""
        by_backend = self.timings.get(timing)
        if not by_backend:
            return None
        n = sum(k for _, k in by_backend.values())
        return sum(v * k for v, k in by_backend.values()) / n, n

    def as_json(self, q: float) -> dict[str, Any]:
        errs = list(self.errors_ms)
        p = quantile(errs, q)
        return {
            "first_tokens": self.first_tokens,
            "ended": self.ended,
            "failed": self.failed,
            "error_rate": self.failed / self.ended if self.ended else None,
            "slo_attainment": self.slo_met / self.first_tokens if self.first_tokens else None,
            "prediction_error_ms_quantile": None if math.isnan(p) else p,
            "prediction_error_ms_mean": sum(errs) / len(errs) if errs else None,
            "observed_s": {t: est[0] for t in sorted(self.timings)
                           if (est := self.timing(t)) is not None},
        }


class Canary:
    """One bucket's canary (see the module docstring). ``on_state`` hears every state change
    (the metric)."""

    def __init__(self, bucket: str, stable_version: str | None, config: CanaryConfig | None,
                 ttft_slo_s: float,
                 on_state: Callable[[str, CanaryState], None] | None = None) -> None:
        self.bucket = bucket
        self.stable_version = stable_version
        self.config = config
        self._slo_s = ttft_slo_s
        self._on_state = on_state
        self.state = CanaryState.NONE
        self.reason: str | None = None
        """Why the canary was rolled back (None while it is not)."""
        self._n = 0
        self._p = self._q = 1
        self._stats = {r: _Stats() for r in Role}
        self._start(config)

    def _start(self, config: CanaryConfig | None) -> None:
        self.config = config
        self._n = 0
        self._stats = {r: _Stats() for r in Role}
        self.reason = None
        if config is not None:
            share = Fraction(config.share).limit_denominator(1_000_000)
            self._p, self._q = share.numerator, share.denominator
        self._set(CanaryState.NONE if config is None else CanaryState.ACTIVE)

    def _set(self, state: CanaryState) -> None:
        self.state = state
        if self._on_state is not None:
            self._on_state(self.bucket, state)

    @property
    def splitting(self) -> bool:
        """A canary is configured (active or rolled back): replicas are chosen by version."""
        return self.config is not None

    @property
    def canary_version(self) -> str | None:
        return self.config.version if self.config is not None else None

    def route(self) -> Role:
        """The role the bucket's next admitted request is due to (not counted: see
        :meth:`admitted`)."""
        if self.state is not CanaryState.ACTIVE:
            return Role.STABLE
        n, p, q = self._n, self._p, self._q
        return Role.CANARY if ((n + 1) * p) // q > (n * p) // q else Role.STABLE

    def admitted(self) -> None:
        """One more of the bucket's requests was admitted (whichever role took it)."""
        self._n += 1

    def first_token(self, role: Role, ttft_s: float, error_s: float) -> None:
        """A request of ``role`` got its first token ``ttft_s`` after its decision, ``error_s``
        later than predicted."""
        s = self._stats[role]
        s.first_tokens += 1
        s.slo_met += ttft_s <= self._slo_s
        s.errors_ms.append(error_s * 1e3)
        if role is Role.CANARY:
            self._judge()

    def ended(self, role: Role, failed: bool) -> None:
        """A request of ``role`` ended (once), failed or not."""
        s = self._stats[role]
        s.ended += 1
        s.failed += failed
        if role is Role.CANARY:
            self._judge()

    def observed_timing(self, role: Role, backend: str, timing: str, estimate_s: float,
                        samples: int) -> None:
        """The router's estimate of ``timing`` (``prefill`` or ``per_token``) on ``backend``,
        a replica of ``role``, from ``samples`` of its streams (:mod:`router.drift`)."""
        self._stats[role].timings.setdefault(timing, {})[backend] = (estimate_s, samples)
        self._judge()

    def _judge(self) -> None:
        c = self.config
        if c is None or self.state is not CanaryState.ACTIVE:
            return
        why = verdict(c, self._stats[Role.CANARY], self._stats[Role.STABLE])
        if why is not None:
            self._roll_back(why)

    def roll_back(self, reason: str) -> None:
        """Stop an active canary for ``reason`` (another worker of the pod judged it:
        :mod:`router.canary_shared`); a canary not active is left as it is."""
        if self.state is CanaryState.ACTIVE:
            self._roll_back(reason)

    def _roll_back(self, reason: str) -> None:
        self.reason = reason
        self._set(CanaryState.ROLLED_BACK)

    def clear(self) -> None:
        """The operator's call: a fresh comparison of the same canary (counts reset)."""
        self._start(self.config)

    def promote(self) -> str:
        """The canary version becomes the stable one and the split ends; returns it.
        Raises ValueError without a canary."""
        if self.config is None:
            raise ValueError(f"bucket '{self.bucket}' has no canary to promote")
        version = self.config.version
        self.stable_version = version
        self._start(None)
        return version

    def as_json(self) -> dict[str, Any]:
        """Plain data for ``/admin/buckets``."""
        c = self.config
        q = c.error_quantile if c is not None else 0.9
        return {
            "stable_version": self.stable_version,
            "state": str(self.state),
            "reason": self.reason,
            "canary": None if c is None else {
                "version": c.version, "share": c.share,
                "max_prediction_error_ms": c.max_prediction_error_ms,
                "max_error_rate": c.max_error_rate, "min_requests": c.min_requests,
                "error_quantile": c.error_quantile, "min_slo_attainment": c.min_slo_attainment,
                "max_timing_drift": c.max_timing_drift,
            },
            "admitted": self._n,
            "by_role": {str(r): s.as_json(q) for r, s in self._stats.items()},
        }


def verdict(c: CanaryConfig, canary: _Stats, stable: _Stats) -> str | None:
    """Why the canary must be rolled back under ``c``'s bounds (None: within them); see the
    module docstring. Pure: the figures of both roles in, the first bound crossed out."""
    n = canary.first_tokens
    if n >= c.min_requests:
        p = quantile(list(canary.errors_ms), c.error_quantile)
        if p > c.max_prediction_error_ms:
            return (f"p{c.error_quantile * 100:g} prediction error {p:.3f} ms >"
                    f" max_prediction_error_ms {c.max_prediction_error_ms:g}"
                    f" after {n} canary requests")
        if c.min_slo_attainment is not None and canary.slo_met / n < c.min_slo_attainment:
            return (f"SLO attainment {canary.slo_met / n:.4f} < min_slo_attainment"
                    f" {c.min_slo_attainment:g} after {n} canary requests")
    if canary.ended >= c.min_requests and canary.failed / canary.ended > c.max_error_rate:
        return (f"error rate {canary.failed / canary.ended:.4f} > max_error_rate"
                f" {c.max_error_rate:g} after {canary.ended} canary requests")
    if c.max_timing_drift is not None:
        for timing in sorted(canary.timings):
            mine, theirs = canary.timing(timing), stable.timing(timing)
            if mine is None or theirs is None or min(mine[1], theirs[1]) < c.min_requests:
                continue
            drift = mine[0] / theirs[0] - 1.0
            if drift > c.max_timing_drift:
                return (f"observed {timing} {mine[0] * 1e3:.3f} ms is {drift:.1%} above the"
                        f" stable replicas' {theirs[0] * 1e3:.3f} ms > max_timing_drift"
                        f" {c.max_timing_drift:g} ({mine[1]} canary samples)")
    return None


def make_canaries(buckets: Iterable[BucketConfig], metrics: RouterMetrics | None = None
                  ) -> dict[str, Canary]:
    """One :class:`Canary` per bucket that names a stable version or a canary; its state goes
    to ``lpu_router_canary_state`` (1 active, 0 rolled back; removed when none)."""

    def on_state(bucket: str, state: CanaryState) -> None:
        if metrics is None:
            return
        if state is CanaryState.NONE:
            with contextlib.suppress(KeyError):
                metrics.canary_state.remove(bucket)
        else:
            metrics.canary_state.labels(bucket).set(1 if state is CanaryState.ACTIVE else 0)

    return {b.name: Canary(b.name, b.stable_version, b.canary, b.policy.ttft_slo_s, on_state)
            for b in buckets if b.stable_version is not None or b.canary is not None}
