"""Busy slot time of one replica over a sliding window: the utilization guard's input.

Utilization of a bucket = busy slot-seconds over the last ``window_s`` seconds
divided by ``slots * window_s``, summed over its healthy replicas. Per replica
the busy time is the larger of two views of the same quantity:

* own: the intervals this router's requests held a slot (finished ones kept in
  time bins, running ones added at query time from the timeline);
* reported: the backend's ``/load`` reports, each report's ``running / slots``
  held until the next report (the newest until now), integrated over the window;
  it also counts other routers' requests.

Both measure busy time, never admitted work, and both count the part of the
window before the first observation as idle (so the figure reads low during the
first window after start). The reported view used to be the *mean* of the reports
in the window, which took a window only partly covered by reports as wholly like
that part: a router up for 2 s of a 10 s window, busy all along, read 100 %.

Finished intervals are accumulated in ``bins`` bins of ``window_s / bins``; the
oldest bin, half out of the window, is weighted by the part still inside (an
approximation of at most one bin width). Memory and query cost are O(bins) for
the own view, O(1) amortized for the reported one, whatever the request rate.
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
        """(time, busy fraction) of the reports, oldest first."""
        self._area = 0.0
        """Sum of fraction * (next time - time) over consecutive reports in ``_samples``."""

    def add_interval(self, start: float, end: float, now: float) -> None:
        """A slot was busy from ``start`` to ``end`` (<= ``now``); record its part in the window."""
        lo = now - self.window_s
        if start > lo:
            lo = start
        if end <= lo:
            return
        w = self._width
        n = self._n
        index, value = self._index, self._value
        i = math.floor(lo / w)
        while True:  # once per bin the interval touches (per request: a few)
            b_lo = i * w
            b_hi = b_lo + w
            overlap = (end if end < b_hi else b_hi) - (lo if lo > b_lo else b_lo)
            if overlap > 0:
                slot = i % n
                if index[slot] != i:
                    index[slot] = i
                    value[slot] = 0.0
                value[slot] += overlap
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
        samples = self._samples
        if samples:
            t, f = samples[-1]
            self._area += f * (now - t)
        samples.append((now, busy_fraction))
        self._prune(now)

    def reported_busy(self, now: float) -> float | None:
        """Busy slot-fraction-seconds the reports show in the window (multiply by the
        slots for slot-seconds); None without a report in it."""
        self._prune(now)
        samples = self._samples
        if not samples:
            return None
        t_first, f_first = samples[0]
        t_last, f_last = samples[-1]
        area = self._area + f_last * (now - t_last)
        lo = now - self.window_s
        if t_first < lo:
            area -= f_first * (lo - t_first)
        return max(0.0, area)

    def _prune(self, now: float) -> None:
        """Keep the reports whose held value reaches into the window."""
        lo = now - self.window_s
        samples = self._samples
        while len(samples) >= 2 and samples[1][0] <= lo:
            t, f = samples.popleft()
            self._area -= f * (samples[0][0] - t)
        if samples and samples[-1][0] < lo:
            samples.clear()  # the newest report is older than the window: no view
        if len(samples) <= 1:
            self._area = 0.0  # drop accumulated rounding error
