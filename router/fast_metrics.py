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

**One thread updates a child, so its value takes no lock.** In one process (no
``PROMETHEUS_MULTIPROC_DIR``) the library gives every child a ``MutexValue``, a float behind a
``threading.Lock``: ~2.5k instructions per update against ~0.6k for the add (callgrind), ~24k a
request over its dozen updates. Here a child's values are :class:`LoopValue`: the same float and
the same methods, without the lock. That is exact while each child is updated by one thread at
a time, and the router holds to more: every metric update runs on the event loop's thread (the
body-parse and token-count threads return values and update nothing; the log listener's thread
writes lines only). Reads (a scrape) need no lock in CPython: a float is read whole. The test
suite checks the rule: with ``LPU_CHECK_METRIC_THREAD=1`` (``tests/conftest.py`` sets it) the
values are :class:`ThreadCheckedValue`, which refuses an update from any thread other than the
first that updated that child, and every test fails that left such an update in
:data:`violations`. In worker processes (the multiprocess directory) the library's file-backed
value stays, lock and all: those updates go to shared memory.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from typing import Any

import prometheus_client
from prometheus_client import values

__all__ = ["Counter", "Gauge", "Histogram", "LoopValue", "ThreadCheckedValue", "violations"]


class LoopValue:
    """prometheus-client's ``MutexValue`` without its lock (see the module docstring)."""

    __slots__ = ("_exemplar", "_value")
    _multiprocess = False

    def __init__(self, *_: object, **__: object) -> None:
        self._value = 0.0
        self._exemplar: object = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: object) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> object:
        return self._exemplar


violations: list[str] = []
"""Updates :class:`ThreadCheckedValue` refused: the thread that tried, and the value's first."""


class ThreadCheckedValue(LoopValue):
    """A :class:`LoopValue` that refuses (records in :data:`violations`, then raises) an update
    from a thread other than the first that updated it: the test suite's value."""

    __slots__ = ("_owner",)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._owner: int | None = None

    def _check(self) -> None:
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif me != self._owner:
            problem = (f"metric value updated from thread {threading.current_thread().name!r},"
                       f" first updated from thread id {self._owner}")
            violations.append(problem)
            raise AssertionError(problem)

    def inc(self, amount: float) -> None:
        self._check()
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._check()
        self._value = value


def _loop_value_class() -> type[LoopValue] | None:
    """The value class for this process's children, or None to keep the library's (worker
    processes: its multiprocess value)."""
    if values.ValueClass is not values.MutexValue:
        return None
    return ThreadCheckedValue if os.environ.get("LPU_CHECK_METRIC_THREAD") == "1" else LoopValue


_VALUE = _loop_value_class()


class _OneValue:
    """For a metric whose child holds one ``_value`` (a counter, a gauge): :data:`_VALUE`'s."""

    _value: Any

    def _metric_init(self) -> None:
        super()._metric_init()  # type: ignore[misc]
        if _VALUE is not None:
            self._value = _VALUE()


class Counter(_OneValue, prometheus_client.Counter):
    """``prometheus_client.Counter``; see the module docstring."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if self._labelvalues and exemplar is None and amount >= 0:
            self._value.inc(amount)
        else:
            super().inc(amount, exemplar)


class Histogram(prometheus_client.Histogram):
    """``prometheus_client.Histogram``; see the module docstring."""

    def _metric_init(self) -> None:
        super()._metric_init()
        if _VALUE is not None:
            self._sum = _VALUE()
            self._buckets = [_VALUE() for _ in self._buckets]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if self._labelvalues and exemplar is None:
            self._sum.inc(amount)
            if amount == amount:  # NaN is in no bucket (no bound is >= it), as the library has it
                # The first bound >= amount; the last bound is +Inf, so one always is.
                self._buckets[bisect_left(self._upper_bounds, amount)].inc(1)
        else:
            super().observe(amount, exemplar)


class Gauge(_OneValue, prometheus_client.Gauge):
    """``prometheus_client.Gauge`` whose children's values are :class:`LoopValue` in one
    process (see the module docstring); its methods are the library's."""
