"""``lpu-bench scale-out --quick``: real emulator and router processes (one router, two workers,
two separate routers, four routers without the piggyback), overloaded; the run's invariants,
not its speed."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks.__main__ import build_parser
from benchmarks.scale_out import QUICK, run


@pytest.mark.timeout(120)
def test_quick_scale_out_keeps_its_invariants(tmp_path: Path) -> None:
    args: argparse.Namespace = build_parser().parse_args(
        ["scale-out", "--quick", "--out", str(tmp_path)])
    doc = run(args)
    cells = doc["cells"]
    assert [c["layout"] for c in cells] == [layout.name for layout in QUICK]
    for c in cells:
        # Every request got an answer: admitted, or refused (429/503), no transport errors.
        assert c["errors"] == 0, c
        assert c["admitted"] + c["refused"] == c["offered"] > 0, c
        # At 2x capacity some are refused, and every admitted request ran once on a backend,
        # its first token within its own deadline on the backend's schedule.
        assert c["refused"] > 0, c
        assert c["ran_on_backends"] == c["admitted"], c
        assert c["ttft_violations_schedule"] == 0, c
        assert c["refusal_p50_ms"] is not None
    # The piggyback is on where it should be, and off where it is switched off.
    on = [c for c in cells if c["piggyback"]]
    off = [c for c in cells if not c["piggyback"]]
    assert all(c["schedule_merged_per_admitted"] + c["schedule_skipped_per_admitted"] > 0.9
               for c in on), on
    assert all(c["schedule_merged_per_admitted"] == 0 for c in off), off
    cost = doc["piggyback_cost"]["by_reservations"]["8"]
    assert cost["parse_us"] > 0 and cost["parse_and_merge_us"] > 0
