"""The hostile-prompts benchmark's figures and prose are computed from its own numbers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks.hostile_prompts import attack_body, markdown, run_figures, verdict
from benchmarks.records import ClientOutcome, RequestRecord


def record(i: int, ttft_s: float | None, gap_s: float | None, ok: bool = True) -> RequestRecord:
    r = RequestRecord(i, 0.0, 200, 64)
    r.outcome = (ClientOutcome.COMPLETED if ok else ClientOutcome.FAILED).value
    r.ttft_s, r.itl_max_s = ttft_s, gap_s
    return r


def test_run_figures_are_the_records_quantiles_in_ms() -> None:
    records = [record(i, 0.080 + i * 1e-3, 0.005) for i in range(100)]
    records.append(record(100, None, None, ok=False))
    fig = run_figures(records)
    assert (fig["requests"], fig["completed"], fig["errors"]) == (101, 100, 1)
    assert fig["ttft_p50_ms"] == pytest.approx(129.5)
    assert fig["longest_gap_ms"] == 5.0


def doc(base: dict[str, Any], hit: dict[str, Any],
        control: dict[str, Any] | None = None) -> dict[str, Any]:
    machine = {"nproc": 2, "cpu": "cpu", "python": "3.11", "platform": "linux", "date": "d"}
    settings = {"rate_per_s": 20, "duration_s": 20, "rounds": 1, "prompt_tokens": 200,
                "max_tokens": 64, "replicas": 2, "time_scale": 1.0, "attackers": 2,
                "attack_bytes": 4_000_000, "attack_interval_s": 0.0, "attacker_nice": 19,
                "artifact": "a"}
    run = {"round": 0, "requests": 1, "completed": 1, "errors": 0, "ttft_p50_ms": 1,
           "replica_down_polls": 0, "router_cpu_percent": 1.0, "attack_answers": {},
           "attack_requests_per_s": 0}
    control = control or base
    return {"machine": machine, "label": "", "settings": settings,
            "runs": [{**run, **base, "condition": "baseline"},
                     {**run, **control, "condition": "control"},
                     {**run, **hit, "condition": "attacked"}],
            "pooled": {"baseline": base, "control": control, "attacked": hit},
            "verdict": verdict(base, hit, control)}


@pytest.mark.parametrize(
    ("added_ttft", "added_gap", "sentence"),
    [(3.0, 9.0, "holds in this run"), (3.0, 11.0, "does not hold"),
     (12.0, 1.0, "does not hold")],
    ids=["within", "gap-over", "ttft-over"])
def test_the_verdict_follows_the_numbers(added_ttft: float, added_gap: float,
                                         sentence: str) -> None:
    base = {"ttft_p99_ms": 100.0, "longest_gap_ms": 10.0, "stream_longest_gap_p99_ms": 9.0}
    hit = {"ttft_p99_ms": 100.0 + added_ttft, "longest_gap_ms": 10.0 + added_gap,
           "stream_longest_gap_p99_ms": 9.0}
    text = markdown(doc(base, hit))
    assert sentence in text
    assert f"added {added_ttft} ms to p99 TTFT and {added_gap} ms" in text


def test_the_control_separates_the_machine_from_the_router() -> None:
    base = {"ttft_p99_ms": 100.0, "longest_gap_ms": 10.0, "stream_longest_gap_p99_ms": 9.0}
    control = {"ttft_p99_ms": 101.0, "longest_gap_ms": 25.0, "stream_longest_gap_p99_ms": 20.0}
    hit = {"ttft_p99_ms": 110.0, "longest_gap_ms": 30.0, "stream_longest_gap_p99_ms": 24.0}
    v = verdict(base, hit, control)
    assert v["machine_added"] == {"ttft_p99_ms": 1.0, "longest_gap_ms": 15.0,
                                  "stream_longest_gap_p99_ms": 11.0}
    assert v["router_added"] == {"ttft_p99_ms": 9.0, "longest_gap_ms": 5.0,
                                 "stream_longest_gap_p99_ms": 4.0}
    text = markdown(doc(base, hit, control))
    assert "the attackers added 1.0 ms to p99 TTFT and 15.0 ms to the longest gap" in text
    assert "(0.0 attacks/s, against 0.0/s to the router)" in text
    assert "the router's handling of the attacks added 9.0 ms, 5.0 ms and 4.0 ms" in text


def test_no_completed_stream_is_not_shown() -> None:
    base = {"ttft_p99_ms": None, "longest_gap_ms": None, "stream_longest_gap_p99_ms": None}
    assert "Not shown by this run" in markdown(doc(base, base))


def test_the_attack_prompt_is_the_size_asked_and_valid_json() -> None:
    body = attack_body(4.0)
    assert 3_990_000 < len(body) < 4 * 1024 * 1024  # under the router's default body cap
    assert json.loads(body)["messages"][0]["role"] == "user"
