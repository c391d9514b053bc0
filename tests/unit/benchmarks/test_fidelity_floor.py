"""lpu-bench fidelity-floor: the request plan it writes, and a real run in which every byte
the writer processes send reaches the reader processes."""

from __future__ import annotations

import pytest

from benchmarks.emulator_fidelity import PER_TOKEN_MS, PREFILL_MS
from benchmarks.fidelity_floor import FloorSetup, markdown, request_writes, run_floor


def test_request_writes_first_token_alone_then_groups_due_at_their_last_token() -> None:
    got = list(request_writes(10.0, 0.08, 0.002, 8, 3))
    assert [n for _, n in got] == [1, 3, 3, 1]
    assert [due for due, _ in got] == pytest.approx([10.08, 10.086, 10.092, 10.094])
    assert sum(n for _, n in got) == 8


def test_request_writes_of_one_token_is_one_write() -> None:
    assert list(request_writes(0.0, 0.5, 0.01, 1, 3)) == [(0.5, 1)]


def test_run_floor_every_byte_written_is_read_and_tokens_are_counted() -> None:
    s = FloorSetup(streams=8, servers=2, clients=2, per_write=3, work_us=0.0, max_tokens=20,
                   prefill_ms=PREFILL_MS, per_token_ms=PER_TOKEN_MS, client_read_ms=20.0,
                   warmup_s=0.1, duration_s=0.6, realtime=False)
    r = run_floor(s)
    assert r.bytes_written > 0
    assert r.bytes_read == r.bytes_written
    assert r.scheduling == "SCHED_OTHER"
    assert r.writes_per_s > 0 and r.tokens_per_s >= r.writes_per_s
    assert len(r.token_p99_ms) == 2
    assert all(p50 <= p99 <= mx for p50, p99, mx
               in zip(r.token_p50_ms, r.token_p99_ms, r.token_max_ms, strict=True))


def test_markdown_says_which_work_per_write_met_the_target() -> None:
    def result(per_write: int, work: float, p99: float) -> dict[str, object]:
        setup = {"streams": 500, "servers": 2, "clients": 2, "per_write": per_write,
                 "work_us": work, "max_tokens": 300, "prefill_ms": 80.0, "per_token_ms": 1.786,
                 "client_read_ms": 20.0, "warmup_s": 2.0, "duration_s": 8.0, "realtime": True}
        return {"setup": setup, "scheduling": "SCHED_FIFO 10", "writes_per_s": 1.0,
                "tokens_per_s": 2.0, "server_cores": 1.0, "server_us_per_write": 9.0,
                "client_cores": 0.2, "token_p50_ms": [1.0], "token_p99_ms": [p99],
                "token_max_ms": [p99], "write_p99_ms": [1.0]}

    doc = {"command": "lpu-bench fidelity-floor", "load_note": "",
           "machine": {"nproc": 2, "cpu": "x", "python": "3.11", "date": "d"},
           "results": [result(2, 0.0, 3.0), result(2, 4.0, 4.9), result(2, 8.0, 12.0),
                       result(3, 0.0, 5.1)]}
    text = markdown(doc)
    assert "- m = 2: p99 <= 5 ms with up to 4 us of work per write; missed from 8 us." in text
    assert "- m = 3: p99 <= 5 ms in no run, not even with no work per write." in text
