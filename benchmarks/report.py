"""Write a run's results to its folder.

Files (all in ``out``):

* ``records.jsonl`` - one JSON object per planned request (see ``RequestRecord``);
* ``requests.csv`` - the same without per-gap lists, for spreadsheets;
* ``timeseries.csv`` - one row per second (see ``metrics.timeseries``);
* ``summary.json`` - the run's settings and headline numbers;
* ``summary.md`` - the same numbers as a short human-readable table.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.records import RequestRecord, write_csv, write_jsonl

__all__ = ["markdown_summary", "write_results"]


def _ms(v: object) -> str:
    return f"{float(v) * 1e3:.1f}" if isinstance(v, int | float) else "-"


def markdown_summary(summary: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """A short markdown report: settings, outcomes, latency table (ms), SLO and goodput."""
    lines = ["# Load generator run", ""]
    lines += [f"- {k}: `{v}`" for k, v in settings.items()]
    o = summary["outcomes"]
    lines += [
        "",
        f"Requests: {summary['requests']} planned ({summary['offered_rps']:.2f}/s offered);"
        f" completed {o['completed']}, rejected (429) {o['rejected']}, failed {o['failed']},"
        f" timed out {o['timed_out']}.",
        f"Throughput: {summary['throughput_rps']:.2f} req/s,"
        f" {summary['output_tokens_per_s']:.0f} output tokens/s.",
        "",
        "| metric (ms) | p50 | p90 | p95 | p99 | max | mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "send_lag_s"):
        s = summary.get(name)
        if not s:
            continue
        cells = [_ms(s.get(k)) for k in ("p50", "p90", "p95", "p99", "max", "mean")]
        lines.append(f"| {name.removesuffix('_s').upper()} | " + " | ".join(cells) + " |")
    slo = summary.get("slo")
    if slo:
        bounds = ", ".join(
            f"{k.removesuffix('_s')} <= {_ms(slo[k])} ms" for k in ("ttft_s", "e2e_s", "tpot_s")
            if slo[k] is not None
        )
        att = slo["attainment"]
        lines += [
            "",
            f"SLO ({bounds}): {slo['met']} met, attainment"
            f" {att * 100 if att is not None else float('nan'):.2f}% of all planned requests"
            f" (rejected included); goodput {slo['goodput_rps']:.2f} req/s.",
        ]
    return "\n".join(lines) + "\n"


def write_results(
    out: Path,
    records: Sequence[RequestRecord],
    summary: Mapping[str, Any],
    series: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "records.jsonl", list(records))
    write_csv(out / "requests.csv", list(records))
    if series:
        with (out / "timeseries.csv").open("w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(series[0]))
            w.writeheader()
            for row in series:
                w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    doc = {"settings": dict(settings), "summary": dict(summary)}
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n", "utf-8")
    (out / "summary.md").write_text(markdown_summary(summary, settings), "utf-8")
