"""lpu-bench client-cost: both clients get every answer whole from the canned upstream, in every
cell, and the table has a row per cell (the CPU figures themselves are not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.__main__ import build_parser
from benchmarks.overhead.client_cost import run, table
from benchmarks.overhead.proxies import start_upstream


@pytest.mark.asyncio
async def test_a_short_run_measures_both_clients_in_every_cell(tmp_path: Path) -> None:
    upstream = start_upstream(tmp_path)
    try:
        rows = await run(upstream.url, requests=40, rounds=2)
    finally:
        upstream.service.stop()
    assert [(r["stream"], r["prompt"], r["round"]) for r in rows] == [
        (stream, prompt, r) for stream in (False, True) for prompt in ("40-character", "4 KB")
        for r in (0, 1)]
    for r in rows:
        assert float(str(r["aiohttp_cpu_s"])) > 0 and float(str(r["backend_http_cpu_s"])) > 0
    lines = table(rows)
    assert len(lines) == 2 + 4
    assert lines[2].startswith("| non-streaming, 40-character |")


def test_the_command_line_knows_it() -> None:
    args = build_parser().parse_args(["client-cost", "--requests", "7", "--rounds", "1"])
    assert (args.requests, args.rounds, args.out_dir) == (7, 1, None)
