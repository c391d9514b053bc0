"""What the router process asks of the interpreter: a cyclic collector that runs less often.
Checked in a fresh interpreter running the CLI's own ``_run`` (the test process's collector
is left alone)."""

from __future__ import annotations

import subprocess
import sys

from router.process import GC_THRESHOLDS


def test_the_serving_process_raises_the_collector_thresholds() -> None:
    code = ("import gc\n"
            "from router.__main__ import _run\n"
            "async def probe():\n"
            "    print(gc.get_threshold())\n"
            "_run(probe(), 'WARNING')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == str(GC_THRESHOLDS)
    assert GC_THRESHOLDS[0] > 700  # CPython's default first-generation threshold
