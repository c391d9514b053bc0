"""The admission margin: seconds added to every predicted time before it is compared with
the SLO.

The timeline predicts when the backend starts a request; what the client sees is later by
the router's own work, the loopback or network hops and the backend's jitter. That gap is
measured at every first token: the prediction error ``e = (first byte at the router -
decision time) - predicted TTFT`` (:meth:`TimelineTicket.first_token`). Two policies
(:class:`~router.admission.settings.MarginPolicy`):

* ``fixed``: the margin is ``margin_s``, always.
* ``adaptive``: ``margin = max(margin_s, min(cap, Q_q(last W errors)))`` where ``Q_q`` is
  the nearest-rank ``q`` quantile (``margin_quantile``) of the last ``W`` (``margin_window``)
  errors of the bucket, and ``cap = MARGIN_CAP_SLO_FRACTION * ttft_slo_s``. An error
  larger than the cap is an *outlier*: no margin the cap allows could have kept that request
  inside its SLO, so it is not evidence for the margin and is left out of the window
  (counted in ``outliers``; it still shows in ``lpu_router_prediction_error_seconds`` and
  its alert). A backend that stalls a few first tokens by seconds is the health checks'
  business; without this rule three such stalls in a window of 256 would hold the whole
  bucket's margin at the cap and refuse a third of its traffic.

Trade-offs of ``adaptive``: it reacts within a window of *samples* (first tokens), not of
seconds - it rises once about ``(1 - q) * W`` late first tokens are in the window and falls
back once they have left it, so a bucket with little traffic keeps an old margin for
longer. It covers only what the router can see: the time from its decision to the first
byte coming back. Time spent before the decision (the request waiting in the socket,
parsing, counting tokens) and after the first byte (the relay to the client, the client's
own scheduling) is not measured, so a client-side SLO still needs ``margin_s`` to cover it.
The cap, and leaving outliers out, keep a broken measurement from refusing everything.

Cost: an observation writes one slot of a ring; every ``refresh_every`` observations the
quantile is recomputed by sorting the ring (``W`` floats, pure Python, microseconds). A
decision reads a cached float.
"""

from __future__ import annotations

import math

from router.admission.settings import MarginPolicy

__all__ = ["AdmissionMargin"]


class AdmissionMargin:
    """The margin in force for one bucket (seconds) and the errors it is learned from."""

    __slots__ = ("_adaptive", "_count", "_measured", "_refresh_every", "_ring", "_since_refresh",
                 "_value", "cap_s", "floor_s", "outliers", "policy", "quantile")

    def __init__(
        self, policy: MarginPolicy, floor_s: float, *, quantile: float = 0.99,
        window: int = 256, cap_s: float = math.inf, refresh_every: int | None = None,
    ) -> None:
        """``floor_s`` is ``margin_s``; ``cap_s`` bounds the measured part (not the floor).

        ``refresh_every`` defaults to ``window // 16`` (at least 1). Raises ValueError for a
        quantile outside (0, 1] or a window below 1.
        """
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.policy = policy
        self._adaptive = policy is MarginPolicy.ADAPTIVE  # a bool: an enum member is a lookup
        self.floor_s = floor_s
        self.quantile = quantile
        self.cap_s = cap_s
        self._ring = [0.0] * window
        self._count = 0
        self._since_refresh = 0
        self._refresh_every = max(1, window // 16 if refresh_every is None else refresh_every)
        self._measured: float | None = None
        self._value = floor_s
        self.outliers = 0
        """Errors above ``cap_s``, left out of the window."""

    @property
    def value(self) -> float:
        """The margin in force, seconds (``floor_s`` until the first refresh)."""
        return self._value

    @property
    def measured(self) -> float | None:
        """The last computed error quantile, uncapped (None before the first refresh or
        with ``fixed``)."""
        return self._measured

    @property
    def samples(self) -> int:
        return min(self._count, len(self._ring))

    def observe(self, error_s: float) -> bool:
        """Record one prediction error (seconds; late is positive). Returns whether the
        margin in force changed. Non-finite errors are ignored, errors above ``cap_s`` are
        counted as outliers only; ``fixed`` records nothing."""
        if not self._adaptive or not math.isfinite(error_s):
            return False
        if error_s > self.cap_s:
            self.outliers += 1
            return False
        self._ring[self._count % len(self._ring)] = error_s
        self._count += 1
        self._since_refresh += 1
        if self._since_refresh < self._refresh_every:
            return False
        self._since_refresh = 0
        n = self.samples
        ordered = sorted(self._ring[:n])
        # Nearest rank: the smallest sample with at least q of the samples at or below it.
        # The epsilon keeps q * n = 253.0000001 from rounding one rank up.
        self._measured = ordered[max(0, math.ceil(self.quantile * n - 1e-9) - 1)]
        old = self._value
        self._value = max(self.floor_s, min(self.cap_s, self._measured))
        return self._value != old

    def snapshot(self) -> dict[str, object]:
        """Plain data for ``GET /admin/buckets`` (seconds)."""
        return {"policy": str(self.policy), "seconds": self._value, "floor_s": self.floor_s,
                "quantile": self.quantile, "measured_s": self._measured,
                "cap_s": self.cap_s if math.isfinite(self.cap_s) else None,
                "samples": self.samples, "window": len(self._ring), "outliers": self.outliers}
