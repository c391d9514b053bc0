"""Gauges read through a function, in prometheus-client's multiprocess mode.

A single router process exports such gauges (requests in flight from the admitter's tickets,
queue depth, utilization, body memory) with ``Gauge.set_function``: the value is computed at
each scrape, and nothing is written on the request path. In multiprocess mode a scrape reads
every worker's values from the shared directory's files, which ``set_function`` never writes.
So with ``--workers N`` those gauges are made by :func:`sampled_gauge_class`: their
``set_function(f)`` hands ``f`` to a :class:`GaugeSampler`, which writes ``f()`` into the
gauge's file every :data:`SAMPLE_EVERY_S` (a task per worker, :meth:`GaugeSampler.run`), when
the worker answers a scrape itself, and once more at its drain. A pod-wide figure is thus at
most :data:`SAMPLE_EVERY_S` old per worker, and still nothing is written per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from router.fast_metrics import Gauge

__all__ = ["SAMPLE_EVERY_S", "GaugeSampler", "sampled_gauge_class"]

SAMPLE_EVERY_S = 0.5
"""Seconds between two samples of a worker's function-read gauges."""


class GaugeSampler:
    """Functions whose values gauges show, written into the gauges on :meth:`sample`."""

    def __init__(self) -> None:
        # Keyed by the gauge child: a reload's new generation, setting a function on the
        # same (shared) child, replaces the retiring generation's.
        self._sources: dict[int, tuple[Gauge, Callable[[], float]]] = {}

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Show ``read()`` on ``gauge`` (a labelled child, or a gauge without labels)."""
        self._sources[id(gauge)] = (gauge, read)

    def sample(self) -> None:
        """Write every function's value into its gauge now."""
        for gauge, read in self._sources.values():
            gauge.set(read())

    async def run(self, every_s: float = SAMPLE_EVERY_S) -> None:
        """Sample every ``every_s`` seconds until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(every_s)


def sampled_gauge_class(sampler: GaugeSampler) -> type[Gauge]:
    """A :class:`Gauge` whose ``set_function`` hands the function to ``sampler`` (its labelled
    children are made of the same class, so they do too)."""

    class SampledGauge(Gauge):
        def set_function(self, f: Callable[[], float]) -> None:
            sampler.watch(self, f)

    return SampledGauge
