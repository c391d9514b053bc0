"""``lpu-bench overhead --quick`` end to end: real processes on loopback, every cell answered.

Asserts that the run completes and every proxy that ran served requests in every cell, without
errors; never how fast (the figures are the benchmark's business)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.overhead.command import PROMPTS
from benchmarks.overhead.proxies import nginx_path


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_run_fills_every_cell(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "overhead", "--quick", "--out-dir", str(tmp_path),
         "--name", "smoke"], capture_output=True, text=True, timeout=110, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "smoke.json").read_text())
    ran = {"direct", "router", "relay"} | ({"nginx"} if nginx_path() else set())
    assert doc["nginx"] == ("ran" if nginx_path() else "not installed")
    cells = {(c["mode"], c["prompt"]): c for c in doc["cells"]}
    assert set(cells) == {(m, p) for m in ("json", "stream") for p in PROMPTS}
    for cell in cells.values():
        assert set(cell["figures"]) == ran
        for name, fig in cell["figures"].items():
            assert fig["requests"] > 0, (cell["mode"], cell["prompt"], name)
            assert fig["errors"] == 0, (cell["mode"], cell["prompt"], name)
            if name != "direct":
                assert fig["cpu_ms_per_request"] > 0 and fig["rps"] > 0
        assert cell["router_vs_relay"] is not None
    assert len(doc["verdict"]) == 4
    assert (tmp_path / "smoke.md").read_text().startswith("# What the router costs")
