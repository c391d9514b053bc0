"""CI smoke test of ``lpu-bench sweep --quick``: every experiment runs end to end on loopback
(emulators, router and load generator in this event loop) and writes its table, plot and
numbers; the index links them. Structure only - no figure is asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import build_parser
from benchmarks.experiments import SweepConfig
from benchmarks.experiments.sweep import EXPERIMENTS, run_sweep, write_index

# Figures each experiment must report as finite numbers in every point of its JSON.
_FINITE = {
    "exp1_queueing": ("p50", "p99", "exact_p99"),
    "exp2_admission": ("goodput_rps", "rejected_share", "p99_admitted"),
    "exp3_rejection": ("measured", "same_arrivals", "stationary"),
    "exp4_burstiness": ("p50", "p99", "exact_p99", "stationary_p99"),
    "exp5_batching": ("p50", "p99", "pred_p99"),
    "exp6_step": ("offered_rps", "admitted_rps", "rejected_share"),
    "exp7_hol": ("short_p99", "long_p99"),
    "exp8_trace_replay": ("offered_rps", "goodput_rps", "p99_ttft_s"),
}


def _finite(v: Any) -> bool:
    if isinstance(v, list):
        return bool(v) and all(_finite(x) for x in v)
    return isinstance(v, int | float) and math.isfinite(v)


def _no_constants(name: str) -> float:
    raise AssertionError(f"non-finite constant {name} in JSON")


@pytest.mark.timeout(150)
async def test_quick_sweep_writes_every_experiment(tmp_path: Path) -> None:
    results = await run_sweep(SweepConfig(isolate=False), tmp_path, quick=True)
    assert [r.name for r in results] == [m.NAME for m in EXPERIMENTS]
    for r in results:
        for suffix in (".md", ".png", ".json"):
            assert (tmp_path / f"{r.name}{suffix}").stat().st_size > 0
        assert (tmp_path / f"{r.name}.png").read_bytes()[:4] == b"\x89PNG"
        md = (tmp_path / f"{r.name}.md").read_text()
        assert r.table_md in md and f"![{r.title}]({r.name}.png)" in md
        doc = json.loads((tmp_path / f"{r.name}.json").read_text(),
                         parse_constant=_no_constants)
        assert doc["machine"]["nproc"] >= 1 and doc["table_md"] == r.table_md
        # The prose is computed from the numbers: never an empty sentence (issue 10).
        assert r.summary and ": ." not in r.summary and doc["summary"] == r.summary
        points = doc.get("points") or doc["phases"]
        assert points
        for p in points:
            for key in _FINITE[r.name]:
                assert _finite(p[key]), (r.name, key, p[key])
            assert p.get("failed", 0) == 0, (r.name, p)
    index = write_index(tmp_path, "lpu-bench sweep --quick").read_text()
    for r in results:
        assert r.title in index and f"({r.name}.png)" in index
    assert "cores" in index


def test_sweep_command_line() -> None:
    args = build_parser().parse_args(["sweep", "--only", "1,2", "--quick", "--out", "x"])
    assert args.only == "1,2" and args.quick and args.out == Path("x") and args.isolate is None
    assert build_parser().parse_args(["sweep", "--in-process"]).isolate is False
    assert not args.check and build_parser().parse_args(["sweep", "--check"]).check
