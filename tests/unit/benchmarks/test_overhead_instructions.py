"""lpu-bench instructions: callgrind's per-thread dumps read into instructions per request, and
the ratio table (the valgrind run itself takes minutes and is not run here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.__main__ import build_parser
from benchmarks.overhead.instructions import Count, per_thread, ratio_table


def _dump(directory: Path, name: str, total: int, key: str = "summary") -> None:
    (directory / name).write_text(f"version: 1\ncmd: python3\n{key}: {total}\nfn=x\n0 1\n")


def test_each_thread_of_the_chosen_dump_per_request(tmp_path: Path) -> None:
    _dump(tmp_path, "cg.41.1-01", 9_000_000)
    _dump(tmp_path, "cg.41.1-02", 400_000, key="totals")
    _dump(tmp_path, "cg.41.1-03", 100)  # an idle thread: under one instruction a request
    _dump(tmp_path, "cg.41.2-01", 1)  # another dump
    _dump(tmp_path, "cg.41-01", 7)  # the exit's dump, no number
    _dump(tmp_path, "cg.42.1-01", 5_000_000)  # another process
    assert per_thread(tmp_path, 41, 1000) == (9000.0, 400.0)
    assert per_thread(tmp_path, 42, 1000) == (5000.0,)
    with pytest.raises(RuntimeError, match="no callgrind dump 3"):
        per_thread(tmp_path, 41, 1000, dump=3)


def test_the_table_gives_each_cell_its_ratio() -> None:
    counts = [
        Count("relay", False, "40-character", 400, (580_000.0,)),
        Count("router", False, "40-character", 400, (920_000.0, 40_000.0)),
        Count("relay", True, "4 KB", 400, (700_000.0,)),
        Count("router", True, "4 KB", 400, (1_050_000.0,)),
        Count("router", False, "4 KB", 400, (1_000_000.0,)),  # no relay: no row
    ]
    rows = ratio_table(counts)
    assert rows[2:] == [
        "| non-streaming, 40-character | 580.0k | 960.0k: 920.0k + 40.0k | 1.66 |",
        "| streaming, 4 KB | 700.0k | 1050.0k: 1050.0k | 1.50 |",
    ]


def test_it_is_a_subcommand() -> None:
    args = build_parser().parse_args(["instructions", "--requests", "50", "--proxies", "relay"])
    assert args.requests == 50 and args.proxies == ["relay"] and args.warm == 100
