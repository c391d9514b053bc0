"""Busy slot time of one replica over a sliding window: the utilization guard's input.

Utilization of a bucket = busy slot-seconds over the last ``window_s`` seconds
divided by ``slots * window_s``, summed over its healthy replicas. Per replica
the busy time is the larger of two views:

* own: the intervals this router's requests held a slot (finished ones kept in
  time bins, running ones added at query time from the timeline);
* reported: the mean of ``running / slots`` over the backend's ``/load`` reports
  in the window, which also counts other routers' requests.

Finished intervals are accumulated in ``bins`` bins of ``window_s / bins``; the
oldest bin, half out of the window, is weighted by the part still inside (an
approximation of at most one bin width). Memory and query cost are O(bins),
whatever the request rate.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["BusyWindow"]


class BusyWindow:
    """Busy slot-seconds of one replica in ``[now - window_s, now]`` (router clock)."""

    def __init__(self, window_s: float, bins: int = 64) -> None:
        if window_s <= 0 or bins < 1:
            raise ValueError("window_s must be > 0 and bins >= 1")
        self.window_s = window_s
        self._width = window_s / bins
        # One spare bin beyond those a window spans, so float rounding never
        # makes the newest bin overwrite one still in use.
        self._n = bins + 2
        self._index = [-1] * self._n
        self._value = [0.0] * self._n
        self._samples: deque[tuple[float, float]] = deque()
        self._sample_sum = 0.0

    def add_interval(self, start: float, end: float, now: float) -> None:
        """A slot was busy from ``start`` to ``end`` (<= ``now``); record its part in the window."""
        lo = max(start, now - self.window_s)
        if end <= lo:
            return
        w = self._width
        i = math.floor(lo / w)
        while True:
            b_lo = i * w
            b_hi = b_lo + w
            overlap = min(end, b_hi) - max(lo, b_lo)
            if overlap > 0:
                slot = i % self._n
                if self._index[slot] != i:
                    self._index[slot] = i
                    self._value[slot] = 0.0
                self._value[slot] += overlap
            if b_hi >= end:
                return
            i += 1

    def finished_busy(self, now: float) -> float:
        """Busy seconds of finished intervals inside the window."""
        w = self._width
        lo = now - self.window_s
        first = math.floor(lo / w)
        last = math.floor(now / w)
        inside_first = ((first + 1) * w - lo) / w
        total = 0.0
        for i, v in zip(self._index, self._value, strict=True):
            if first < i <= last:
                total += v
            elif i == first:
                total += v * inside_first
        return total

    def add_sample(self, busy_fraction: float, now: float) -> None:
        """A backend report said ``busy_fraction`` of the slots were running at ``now``."""
        self._samples.append((now, busy_fraction))
        self._sample_sum += busy_fraction
        self._prune(now)

    def reported_fraction(self, now: float) -> float | None:
        """Mean reported busy fraction over the window; None without reports in it."""
        self._prune(now)
        if not self._samples:
            return None
        return self._sample_sum / len(self._samples)

    def _prune(self, now: float) -> None:
        cutoff = now - self.window_s
        samples = self._samples
        while samples and samples[0][0] < cutoff:
            self._sample_sum -= samples.popleft()[1]
        if not samples:
            self._sample_sum = 0.0  # drop accumulated rounding error
