"""router.loop_load: the busy counter and the lag gauge, on given readings and on a real loop."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from prometheus_client import CollectorRegistry

from router.loop_load import CpuLedger, LoopLoad
from router.metrics import RouterMetrics, make_metrics


def _sampler(window: int = 3, ledger: CpuLedger | None = None
             ) -> tuple[LoopLoad, RouterMetrics]:
    metrics = make_metrics(CollectorRegistry())
    load = LoopLoad(metrics.loop_busy_seconds, metrics.loop_lag_seconds, metrics.event_loops,
                    interval_s=0.1, window=window, ledger=ledger or CpuLedger())
    return load, metrics


def _value(metrics: RouterMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


@pytest.mark.parametrize(
    ("wakes", "busy", "lag"),
    [
        # (expected, now, cpu) per wake; the first wake only sets the CPU baseline.
        ([(1.0, 1.0, 5.0), (1.1, 1.1, 5.05), (1.2, 1.2, 5.15)], 0.15, 0.0),
        # Woke 30 ms late once, then on time: the window still holds the 30 ms.
        ([(1.0, 1.03, 0.0), (1.13, 1.13, 0.1), (1.23, 1.23, 0.2)], 0.2, 0.03),
        # The 30 ms lag has left a window of three wakes.
        ([(1.0, 1.03, 0.0), (1.13, 1.131, 0.0), (1.23, 1.232, 0.0), (1.33, 1.333, 0.0)],
         0.0, 0.003),
        # A timer firing early is no lag; a thread clock that did not move adds nothing.
        ([(1.0, 0.99, 2.0), (1.1, 1.1, 2.0)], 0.0, 0.0),
    ],
    ids=["steady", "spike-kept", "spike-aged-out", "early-and-idle"],
)
def test_tick_counts_busy_cpu_and_keeps_the_worst_recent_lag(
    wakes: list[tuple[float, float, float]], busy: float, lag: float,
) -> None:
    load, metrics = _sampler()
    for expected, now, cpu in wakes:
        load.tick(expected, now, cpu)
    assert _value(metrics, "lpu_router_event_loop_busy_seconds_total") == pytest.approx(busy)
    assert _value(metrics, "lpu_router_event_loop_lag_seconds") == pytest.approx(lag)


def test_two_samplers_on_one_thread_count_its_cpu_once() -> None:
    # A reload's two generations: each counts what the other has not.
    ledger = CpuLedger()
    old, old_metrics = _sampler(ledger=ledger)
    new, new_metrics = _sampler(ledger=ledger)
    old.tick(1.0, 1.0, 1.0)  # the baseline
    old.tick(1.1, 1.1, 1.2)
    new.tick(1.1, 1.1, 1.5)
    old.tick(1.2, 1.2, 1.6)
    new.tick(1.2, 1.2, 1.6)
    busy = "lpu_router_event_loop_busy_seconds_total"
    assert _value(old_metrics, busy) == pytest.approx(0.3)
    assert _value(new_metrics, busy) == pytest.approx(0.3)


def test_bad_settings_are_refused() -> None:
    metrics = make_metrics(CollectorRegistry())
    with pytest.raises(ValueError):
        LoopLoad(metrics.loop_busy_seconds, metrics.loop_lag_seconds, metrics.event_loops,
                 interval_s=0)


@pytest.mark.timeout(10)
async def test_a_blocked_loop_shows_as_lag_and_busy_time() -> None:
    load, metrics = _sampler(window=50, ledger=None)
    task = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(0.15)
        assert _value(metrics, "lpu_router_event_loops") == 1
        # Hold the loop's thread for 0.3 s of CPU: the sampler wakes at least 0.3 - 0.1 s late
        # and counts at least that much CPU (lower bounds: a busy machine only adds to them).
        start = time.thread_time()
        while time.thread_time() - start < 0.3:
            pass
        await asyncio.sleep(0.25)
        assert _value(metrics, "lpu_router_event_loop_lag_seconds") >= 0.2
        assert _value(metrics, "lpu_router_event_loop_busy_seconds_total") >= 0.3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Still a loop in this process (a reload's next generation samples it on).
    assert _value(metrics, "lpu_router_event_loops") == 1
