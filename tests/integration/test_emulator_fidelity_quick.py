"""The fidelity benchmark end to end, tiny: an emulator fleet of 2 processes, 2 client
processes; the emulator's per-token histogram counts exactly the tokens the clients got."""

from __future__ import annotations

import math
import os

import pytest

from benchmarks.emulator_fidelity import Setup, run_one


@pytest.mark.parametrize("client_read_ms", [0.0, 10.0], ids=["eager", "polled-10ms"])
def test_histogram_counts_every_token_the_clients_received(client_read_ms: float) -> None:
    """Eager clients read each write as it comes; polled ones every 10 ms: both must read
    every stream to its end, whole."""
    r = run_one(Setup(streams=6, replicas=2, processes=2, clients=2, tick_ms=5.0,
                      write_budget=20000.0, max_tokens=20, warmup_s=0.2, duration_s=0.6,
                      client_read_ms=client_read_ms))
    assert r.client_read_ms == client_read_ms
    assert r.client_requests_total >= 6  # every stream finished at least one request
    assert r.client_tokens_total == 20 * r.client_requests_total
    assert r.server_tokens_total == r.client_tokens_total
    assert r.server_first_total == r.client_requests_total
    assert r.tokens > 0 and r.emulator_cpu_cores > 0
    # Quantiles of a non-empty histogram are bucket bounds, first tokens no later than max.
    assert math.isfinite(r.server_later_p50_ms)
    assert r.server_first_p50_ms <= r.server_first_p99_ms <= r.server_first_max_ms


def test_realtime_names_the_emulators_class_and_restores_the_callers() -> None:
    """``--realtime``: the result names the emulator's class in force (SCHED_FIFO where the
    test may set it, else SCHED_OTHER and why); the run itself is whole either way, and the
    calling thread gets its own class back."""
    before = os.sched_getscheduler(0)
    r = run_one(Setup(streams=4, replicas=2, processes=2, clients=2, tick_ms=5.0,
                      write_budget=20000.0, max_tokens=20, warmup_s=0.2, duration_s=0.4,
                      client_read_ms=10.0, realtime=True))
    assert r.emulator_scheduling.startswith(("SCHED_FIFO", "SCHED_OTHER ("))
    assert r.server_tokens_total == r.client_tokens_total > 0
    assert os.sched_getscheduler(0) == before
