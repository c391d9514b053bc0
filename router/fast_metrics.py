"""Counters and histograms whose labelled children update with one call into the value.

A proxied request updates about a dozen series. prometheus-client's ``Counter.inc`` checks on
every call that the metric is observable (two more Python calls) and validates the amount, and
``Histogram.observe`` does the same and then finds the bucket by a Python loop over every upper
bound; each then takes the value's lock. :class:`Counter` and :class:`Histogram` are the
library's own classes (their children are made by the library's ``labels()``, their samples
collected by it, single-process and multiprocess alike) with a shorter way for the common call:
a labelled child, no exemplar, and for a counter an amount that is not negative. Everything
else (a metric without labels, a parent, an exemplar, a negative amount: the library's error)
takes the library's own method. Either way the value gets the same ``inc`` calls, so a scrape
sees what the library's methods would have left (a test compares the two expositions).

Cost (callgrind, per call): ``inc`` 2 Python calls instead of 4; ``observe`` a bisection in C
instead of a loop over 15-21 bounds.
"""

from __future__ import annotations

from bisect import bisect_left

import prometheus_client

__all__ = ["Counter", "Histogram"]


class Counter(prometheus_client.Counter):
    """``prometheus_client.Counter``; see the module docstring."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if self._labelvalues and exemplar is None and amount >= 0:
            self._value.inc(amount)
        else:
            super().inc(amount, exemplar)


class Histogram(prometheus_client.Histogram):
    """``prometheus_client.Histogram``; see the module docstring."""

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if self._labelvalues and exemplar is None:
            self._sum.inc(amount)
            if amount == amount:  # NaN is in no bucket (no bound is >= it), as the library has it
                # The first bound >= amount; the last bound is +Inf, so one always is.
                self._buckets[bisect_left(self._upper_bounds, amount)].inc(1)
        else:
            super().observe(amount, exemplar)
