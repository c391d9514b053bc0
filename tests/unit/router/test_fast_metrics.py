"""router.fast_metrics: the same exposition as prometheus-client's own classes after the same
calls, the same errors, the short way taken where it should be, and values without a lock that
refuse a second thread (under the test suite's ``LPU_CHECK_METRIC_THREAD=1``)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from router import fast_metrics
from router.metrics import LATENCY_BUCKETS, PREDICTION_ERROR_BUCKETS

_AMOUNTS = [0.0, 1e-9, 0.001, 0.0025, 0.003, 0.1, 0.25, 1.0, 7.5, 59.9, 60.0, 1e9, -0.0, -0.001,
            -0.5, -1.0, -3.0, math.inf, -math.inf, math.nan]


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines but the creation times (which differ between two metrics)."""
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]


def _drive(counter_cls: type[prometheus_client.Counter],
           histogram_cls: type[prometheus_client.Histogram],
           gauge_cls: type[prometheus_client.Gauge]) -> tuple[list[str], list[str]]:
    """The same calls on a fresh registry; returns the exposition and the errors raised."""
    reg = CollectorRegistry()
    errors: list[str] = []

    def attempt(call: Callable[[], Any]) -> None:
        try:
            call()
        except ValueError as exc:
            errors.append(str(exc))

    labelled = counter_cls("c", "counter", ["bucket"], registry=reg)
    plain = counter_cls("p", "plain counter", registry=reg)
    latency = histogram_cls("h", "latency", ["bucket"], buckets=LATENCY_BUCKETS, registry=reg)
    error = histogram_cls("e", "error", ["bucket"], buckets=PREDICTION_ERROR_BUCKETS,
                          registry=reg)
    bare = histogram_cls("b", "unlabelled", buckets=(0.1, 1.0), registry=reg)
    for child in (labelled.labels("a"), labelled.labels("b"), plain):
        child.inc()
        child.inc(2.5)
        child.inc(0)
        attempt(lambda c=child: c.inc(-1))
        child.inc(1, exemplar={"trace": "t1"})
    attempt(lambda: labelled.inc())  # a parent: the library's error
    for hist in (latency.labels("a"), error.labels("a"), bare):
        for x in _AMOUNTS:
            hist.observe(x)
        hist.observe(0.2, exemplar={"trace": "t2"})
    attempt(lambda: latency.observe(1.0))
    gauge = gauge_cls("g", "gauge", ["bucket"], registry=reg)
    for child in (gauge.labels("a"), gauge_cls("q", "plain gauge", registry=reg)):
        child.set(3.5)
        child.inc(2)
        child.dec(0.25)
    gauge.labels("b").set(-1e9)
    gauge.labels("f").set_function(lambda: 42.0)
    return _exposition(reg), errors


def test_the_same_exposition_and_errors_as_the_librarys_classes() -> None:
    ours = _drive(fast_metrics.Counter, fast_metrics.Histogram, fast_metrics.Gauge)
    theirs = _drive(prometheus_client.Counter, prometheus_client.Histogram,
                    prometheus_client.Gauge)
    assert ours == theirs
    assert len(ours[1]) == 5  # three negative increments, two parents


def test_a_labelled_child_takes_the_short_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the library's ``inc`` nor its ``observe`` runs for a child's plain update."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the library's own method ran")

    reg = CollectorRegistry()
    counter = fast_metrics.Counter("c", "counter", ["bucket"], registry=reg).labels("a")
    hist = fast_metrics.Histogram("h", "h", ["bucket"], buckets=(1.0, 2.0),
                                  registry=reg).labels("a")
    monkeypatch.setattr(prometheus_client.Counter, "inc", refuse)
    monkeypatch.setattr(prometheus_client.Histogram, "observe", refuse)
    counter.inc()
    counter.inc(3)
    hist.observe(1.5)
    hist.observe(1.0)
    assert reg.get_sample_value("c_total", {"bucket": "a"}) == 4.0
    assert reg.get_sample_value("h_bucket", {"bucket": "a", "le": "1.0"}) == 1.0
    assert reg.get_sample_value("h_bucket", {"bucket": "a", "le": "2.0"}) == 2.0
    assert reg.get_sample_value("h_sum", {"bucket": "a"}) == 2.5


@pytest.fixture
def no_violations_left() -> Iterator[None]:
    """The refusals a test provokes on purpose are its own (conftest fails any left over)."""
    yield
    fast_metrics.violations.clear()


def test_in_one_process_a_childs_values_take_no_lock() -> None:
    """Every value of a labelled child (a histogram's sum and buckets too) is the lock-free
    one; under the test suite it is the thread-checking kind."""
    assert fast_metrics.ThreadCheckedValue.__mro__[1] is fast_metrics.LoopValue
    reg = CollectorRegistry()
    counter = fast_metrics.Counter("c", "c", ["bucket"], registry=reg).labels("a")
    gauge = fast_metrics.Gauge("g", "g", ["bucket"], registry=reg).labels("a")
    hist = fast_metrics.Histogram("h", "h", ["bucket"], buckets=(1.0,), registry=reg).labels("a")
    held = [counter._value, gauge._value, hist._sum, *hist._buckets]
    assert len(held) == 5
    assert all(type(v) is fast_metrics.ThreadCheckedValue for v in held)
    assert not any(hasattr(v, "_lock") for v in held)


def test_with_the_multiprocess_value_the_librarys_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process's values are the library's file-backed ones: nothing is replaced."""
    monkeypatch.setattr(prometheus_client.values, "ValueClass", object)
    assert fast_metrics._loop_value_class() is None
    monkeypatch.setattr(prometheus_client.values, "ValueClass", prometheus_client.values.MutexValue)
    monkeypatch.delenv("LPU_CHECK_METRIC_THREAD")
    assert fast_metrics._loop_value_class() is fast_metrics.LoopValue


@pytest.mark.usefixtures("no_violations_left")
def test_an_update_from_a_second_thread_is_refused() -> None:
    reg = CollectorRegistry()
    counter = fast_metrics.Counter("c", "c", ["bucket"], registry=reg).labels("a")
    gauge = fast_metrics.Gauge("g", "g", ["bucket"], registry=reg).labels("a")
    counter.inc()
    gauge.set(1.0)
    raised: list[BaseException] = []

    def elsewhere() -> None:
        for update in (counter.inc, lambda: gauge.set(2.0)):
            try:
                update()
            except AssertionError as exc:
                raised.append(exc)

    thread = threading.Thread(target=elsewhere, name="intruder")
    thread.start()
    thread.join()
    assert len(raised) == 2 and len(fast_metrics.violations) == 2
    assert all("'intruder'" in v for v in fast_metrics.violations)
    counter.inc()  # the first thread still may
    assert reg.get_sample_value("c_total", {"bucket": "a"}) == 2.0
    assert reg.get_sample_value("g", {"bucket": "a"}) == 1.0
