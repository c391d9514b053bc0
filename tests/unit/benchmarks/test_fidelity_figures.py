"""The fidelity benchmark's reading of the emulator's histogram and its computed sentences."""

from __future__ import annotations

import math

import pytest

from benchmarks.fidelity_histogram import Buckets, parse
from benchmarks.fidelity_report import markdown, quantum_ms, scheduling, tokens_per_write

TEXT = """# TYPE lpu_emulator_token_lateness_seconds histogram
lpu_emulator_token_lateness_seconds_bucket{le="0.001",model_name="m",token="later"} 90.0
lpu_emulator_token_lateness_seconds_bucket{le="0.005",model_name="m",token="later"} 99.0
lpu_emulator_token_lateness_seconds_bucket{le="0.01",model_name="m",token="later"} 100.0
lpu_emulator_token_lateness_seconds_bucket{le="+Inf",model_name="m",token="later"} 100.0
lpu_emulator_token_lateness_seconds_bucket{le="0.001",model_name="m",token="first"} 1.0
lpu_emulator_token_lateness_seconds_bucket{le="0.005",model_name="m",token="first"} 2.0
lpu_emulator_token_lateness_seconds_bucket{le="0.01",model_name="m",token="first"} 2.0
lpu_emulator_token_lateness_seconds_bucket{le="+Inf",model_name="m",token="first"} 2.0
"""


def test_quantiles_are_bucket_bounds() -> None:
    later = parse(TEXT)["later"]
    assert later.count == 100
    assert later.quantile_bound(0.5) == 0.001
    assert later.quantile_bound(0.99) == 0.005
    assert later.max_bound() == 0.01
    assert math.isnan(Buckets().quantile_bound(0.5))


def test_replicas_add_and_windows_subtract() -> None:
    h = parse(TEXT)["later"]
    two = h + h
    assert two.count == 200 and two.quantile_bound(0.99) == 0.005
    assert (two - h).cumulative == h.cumulative


def _row(streams: int, p99: float) -> dict[str, object]:
    return {"streams": streams, "replicas": 2, "processes": 2, "clients": 2, "tick_ms": 5.0,
            "write_budget_per_s": 20000.0, "tokens_per_s": 1000.0, "server_first_p50_ms": 1.0,
            "server_first_p99_ms": p99, "server_first_max_ms": p99,
            "server_later_p50_ms": 1.0, "server_later_p99_ms": p99,
            "server_later_max_ms": p99, "server_all_p99_ms": p99, "client_p50_ms": 2.0,
            "client_p99_ms": 9.0, "client_max_ms": 20.0, "client_first_p99_ms": 3.0,
            "emulator_cpu_us_per_token": 5.0, "emulator_cpu_cores": 0.5,
            "client_cpu_cores": 0.4, "emulator_runqueue_wait_share": 0.1,
            "client_tokens_total": 10, "server_tokens_total": 10}


@pytest.mark.parametrize(("p99", "verdict"), [(4.5, "**holds**"), (7.5, "**does not hold**")],
                         ids=["met", "missed"])
def test_the_target_sentence_follows_the_500_stream_row(p99: float, verdict: str) -> None:
    doc = {"command": "lpu-bench emulator-fidelity", "prefill_ms": 80.0,
           "per_token_ms": 1.786, "max_tokens": 300,
           "machine": {"nproc": 2, "cpu": "x", "python": "3.11", "platform": "linux",
                       "date": "now"},
           "results": [_row(100, 1.0), _row(500, p99)]}
    text = markdown(doc)
    assert f"the target {verdict}" in text
    assert f"at most {p99:.1f} ms" in text


def test_quantum_is_the_tick_or_the_write_budget_share() -> None:
    assert quantum_ms({"streams": 100, "replicas": 2, "tick_ms": 5.0,
                       "write_budget_per_s": 20000.0}) == 5.0
    assert quantum_ms({"streams": 500, "replicas": 2, "tick_ms": 5.0,
                       "write_budget_per_s": 20000.0}) == 12.5


@pytest.mark.parametrize(("quantum", "m"), [(1.0, 1), (3.0, 2), (5.0, 3), (10.0, 6)],
                         ids=["below-a-token", "3ms", "5ms", "10ms"])
def test_tokens_per_write_by_design(quantum: float, m: int) -> None:
    assert tokens_per_write(quantum, 1.786) == m


def test_a_missed_target_states_the_writes_and_cores_it_needs() -> None:
    row = _row(500, 40.0) | {"tokens_per_s": 240000.0, "writes_per_s": 40000.0,
                             "emulator_cpu_us_per_write": 20.0, "client_cpu_cores": 0.4}
    doc = {"command": "c", "prefill_ms": 80.0, "per_token_ms": 1.786, "max_tokens": 300,
           "machine": {"nproc": 2, "cpu": "x", "python": "3.11", "platform": "linux",
                       "date": "now"},
           "results": [row]}
    text = markdown(doc)
    # 5 ms allows 3 tokens a write: 80 000 writes/s; 20 us + 10 us (0.4 cores / 40 000) each.
    assert "at most 3 tokens" in text and "80 000 writes/s" in text
    assert "1.60 + 0.80 = 2.40 cores of the machine's 2" in text


def test_the_scheduling_class_is_stated_for_the_table_and_each_variant() -> None:
    """Rows from before ``--realtime`` carry no class: they ran SCHED_OTHER; a variant run
    with ``--realtime`` says the class it ran under."""
    machine = {"nproc": 2, "cpu": "x", "python": "3.11", "platform": "linux", "date": "now"}
    fifo = _row(500, 7.0) | {"emulator_scheduling": "SCHED_FIFO 10"}
    doc = {"command": "c", "prefill_ms": 80.0, "per_token_ms": 1.786, "max_tokens": 300,
           "machine": machine, "results": [_row(500, 20.0)],
           "variants": [{"command": "c --realtime", "results": [fifo]}]}
    main, variant = markdown(doc).split("## Other settings")
    assert "emulator processes SCHED_OTHER like the clients" in main
    assert ("emulator processes under SCHED_FIFO 10 (`--realtime`), clients SCHED_OTHER"
            in variant)
    assert scheduling([_row(500, 1.0) | {"emulator_scheduling": "SCHED_OTHER (not root)"}]) \
        == "emulator processes under SCHED_OTHER (not root) (`--realtime`), clients SCHED_OTHER"
