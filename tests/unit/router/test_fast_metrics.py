"""router.fast_metrics: the same exposition as prometheus-client's own classes after the same
calls, the same errors, and the short way taken where it should be."""

from __future__ import annotations

import math
from collections.abc import Callable
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
           histogram_cls: type[prometheus_client.Histogram]) -> tuple[list[str], list[str]]:
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
    return _exposition(reg), errors


def test_the_same_exposition_and_errors_as_the_librarys_classes() -> None:
    ours = _drive(fast_metrics.Counter, fast_metrics.Histogram)
    theirs = _drive(prometheus_client.Counter, prometheus_client.Histogram)
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
