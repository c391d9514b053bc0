"""The request path's metric children, each looked up once per label set.

``metric.labels(*values)`` costs microseconds on every call in ``prometheus_client`` (it
converts and validates the values and takes the metric's lock); the completion path touches a
dozen series per request. :class:`Children` keeps the child of each label tuple after its first
use, so a request pays one dict lookup per series. The label values are closed sets (bucket names
and backend URLs from the config, priorities, outcomes), so the caches stay small.

The children are the registry's own objects: a scrape sees exactly what ``labels()`` would give.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from router.metrics import RouterMetrics

__all__ = ["Children", "RequestSeries"]

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """``metric.labels(*values)``, memoized per label tuple."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._cache: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._metric.labels(*values)
        return child


class RequestSeries:
    """The series a completion request updates, with their children memoized."""

    __slots__ = ("admitted", "completion_tokens", "e2e_seconds", "finished",
                 "prompt_tokens", "rejected", "ttft_seconds")

    def __init__(self, metrics: RouterMetrics) -> None:
        self.admitted = Children(metrics.requests_admitted)
        """{bucket, priority}"""
        self.rejected = Children(metrics.requests_rejected)
        """{bucket, priority, reason}"""
        self.finished = Children(metrics.requests_finished)
        """{bucket, outcome}"""
        self.ttft_seconds = Children(metrics.ttft_seconds)
        """{bucket}"""
        self.e2e_seconds = Children(metrics.e2e_seconds)
        """{bucket}"""
        self.prompt_tokens = Children(metrics.prompt_tokens)
        """{bucket}"""
        self.completion_tokens = Children(metrics.completion_tokens)
        """{bucket}"""
