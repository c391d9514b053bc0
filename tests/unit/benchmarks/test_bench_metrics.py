"""Summaries, time series, goodput, SSE parsing, the planner and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import planner, theory
from benchmarks.__main__ import main
from benchmarks.metrics import LogHistogram, Slo, max_rate_meeting_slo, summarize, timeseries
from benchmarks.records import ClientOutcome, RequestRecord, read_jsonl, write_jsonl
from benchmarks.report import write_results
from benchmarks.sse import SSEParser, interpret
from lpu_protocol.artifact import builtin_artifact


def _rec(i: int, at: float, outcome: ClientOutcome, ttft: float | None = None,
         e2e: float | None = None, tokens: int = 0) -> RequestRecord:
    status = {ClientOutcome.COMPLETED: 200, ClientOutcome.REJECTED: 429}.get(outcome, 500)
    return RequestRecord(i, at, 10, tokens, sent_s=at, outcome=outcome.value, status=status,
                         ttft_s=ttft, e2e_s=e2e, tokens=tokens)


RECORDS = [
    _rec(0, 0.1, ClientOutcome.COMPLETED, 0.1, 0.5, 5),   # tpot 0.1
    _rec(1, 0.2, ClientOutcome.COMPLETED, 0.4, 1.2, 9),   # misses a 0.3 s TTFT SLO
    _rec(2, 1.5, ClientOutcome.REJECTED, None, 0.001),
    _rec(3, 1.6, ClientOutcome.FAILED),
]


def test_summary_counts_rejections_in_the_denominator() -> None:
    s = summarize(RECORDS, 2.0, Slo(ttft_s=0.3))
    assert s["outcomes"] == {"completed": 2, "rejected": 1, "failed": 1, "timed_out": 0}
    assert s["slo"]["met"] == 1 and s["slo"]["attainment"] == 0.25
    assert s["slo"]["goodput_rps"] == 0.5 and s["throughput_rps"] == 1.0
    assert s["tpot_s"]["p50"] == pytest.approx(0.1)
    assert RECORDS[1].tpot_s == pytest.approx(0.1)


def test_slo_bounds() -> None:
    r = RECORDS[1]
    assert Slo(ttft_s=0.5).met(r) and not Slo(ttft_s=0.5, e2e_s=1.0).met(r)
    assert not Slo(tpot_s=0.05).met(r) and not Slo().met(RECORDS[2])


def test_timeseries_by_intended_second() -> None:
    rows = timeseries(RECORDS, 2.0)
    assert [r["offered"] for r in rows] == [2, 2]
    assert [r["rejected"] for r in rows] == [0, 1] and [r["failed"] for r in rows] == [0, 1]
    assert rows[0]["in_flight"] == 1  # record 1 runs until 1.4 s
    assert rows[0]["ttft_p50_s"] == pytest.approx(0.25)


def test_max_rate_meeting_slo() -> None:
    sweep = [(10, 1.0), (20, 0.995), (30, 0.97), (40, 0.999)]
    assert max_rate_meeting_slo(sweep, 0.99) == 20  # 40 is past the knee: not counted
    assert max_rate_meeting_slo(sweep, 0.999) == 10
    assert max_rate_meeting_slo([(5, 0.5)], 0.9) is None


def test_log_histogram_quantiles() -> None:
    h = LogHistogram()
    for v in range(1, 1001):
        h.add(v / 1000)
    assert h.quantile(0.5) == pytest.approx(0.5, rel=0.01)
    assert h.quantile(0.99) == pytest.approx(0.99, rel=0.01)
    assert LogHistogram().quantile(0.5) is None


def test_sse_parser_handles_split_events() -> None:
    p = SSEParser()
    assert p.feed(b'data: {"a"') == []
    assert p.feed(b': 1}\n\ndata: [DONE]\r\n\r\n') == ['{"a": 1}', "[DONE]"]
    assert interpret('{"choices":[{"delta":{"content":"x"}}]}').content
    assert not interpret('{"choices":[{"delta":{"role":"assistant","content":""}}]}').content
    assert interpret('{"choices":[{"text":"y"}]}').content
    u = interpret('{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}')
    assert (u.prompt_tokens, u.completion_tokens) == (3, 4)
    assert interpret('{"error":{"message":"boom"}}').error == "stream error: boom"
    assert interpret("nope").error is not None


def test_records_round_trip_and_report(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "r.jsonl", RECORDS)
    assert read_jsonl(tmp_path / "r.jsonl") == RECORDS
    s = summarize(RECORDS, 2.0, Slo(ttft_s=0.3))
    write_results(tmp_path / "out", RECORDS, s, timeseries(RECORDS, 2.0), {"rate": 2})
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["records.jsonl", "requests.csv", "summary.json", "summary.md",
                     "timeseries.csv"]
    assert "attainment 25.00%" in (tmp_path / "out" / "summary.md").read_text()


def test_planner_meets_the_slo_with_headroom() -> None:
    art = builtin_artifact("llama-3.1-8b-2k")
    p = planner.plan(art, 40.0, 0.5, 128, headroom=0.1)
    assert p.replicas is not None and p.utilization is not None
    assert p.safe_utilization == pytest.approx(p.max_utilization - 0.1)
    assert p.utilization <= p.safe_utilization
    assert p.predicted_ttft_s is not None and p.predicted_ttft_s <= 0.5
    assert p.replicas == 1 or 40.0 / (p.replicas - 1) / p.capacity_rps > p.safe_utilization
    # At the knee the p99 TTFT is the SLO.
    d = art.service_time(128)
    lam = p.max_utilization * art.slots / d
    knee = theory.mdc_ttft_percentile(0.99, lam, art.slots, d, art.prefill_s)
    assert knee == pytest.approx(0.5, abs=1e-3)
    assert planner.safe_utilization(art, 128, 0.05) == 0.0  # prefill alone is 80 ms


def test_cli_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--artifact", "llama-3.3-70b-8k", "--rate", "5",
                 "--p99-ttft-ms", "800"]) == 0
    assert "replicas" in capsys.readouterr().out
    assert main(["plan", "--artifact", "nope", "--rate", "5", "--p99-ttft-ms", "800"]) == 2


def test_cli_run_refuses_bad_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--url", "http://127.0.0.1:9", "--model", "m", "--out", str(tmp_path)]
    assert main([*base, "--arrivals", "step"]) == 2
    assert main([*base, "--prompt-tokens", "fixed:0"]) == 2
    assert "lpu-bench run" in capsys.readouterr().err
