"""``--workers 2`` against ``--workers 1`` on the canned upstream (benchmarks/overhead's pieces):
throughput and CPU per request of the router's whole process tree, with ``wrk`` (or the Python
closed loop when wrk is missing), and what the design predicts for more cores.

On this machine the load generator and the canned upstream share the two cores with the
router, so the throughput ratio is what it is here; the CPU per request is the figure that
carries over (nothing per request is shared between workers but the backend and Redis).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchmarks.overhead.command import body
from benchmarks.overhead.load import drive, warm_up, wrk_path
from benchmarks.overhead.proxies import router_config, start_upstream
from benchmarks.processes import start, tree_cpu_seconds, url_in

__all__ = ["predict", "workers_throughput"]

CONNECTIONS = 32


def _one(workdir: Path, upstream: str, workers: int, duration_s: int,
         wrk: str | None) -> dict[str, Any]:
    config = workdir / f"wrk-router-{workers}.toml"
    config.write_text(router_config(upstream))
    cmd = [sys.executable, "-m", "router", "serve", str(config), "--workers", str(workers)]
    service = start(cmd, name=f"router-w{workers}", ready_lines=1,
                    stderr=workdir / f"wrk-router-{workers}.log", timeout_s=60.0)
    try:
        url = url_in(service.lines[0])
        payload = body(False, 1000)
        warm_up(url, payload, 200 * workers)
        before = tree_cpu_seconds(service.proc.pid)
        load = drive(url, payload, connections=CONNECTIONS, duration_s=duration_s,
                     workdir=workdir, wrk=wrk)
        used = tree_cpu_seconds(service.proc.pid) - before
    finally:
        service.stop()
    return {"workers": workers, "rps": load.rps, "requests": load.requests,
            "errors": load.errors, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms,
            "cpu_ms_per_request": used / load.requests * 1e3 if load.requests else None,
            "cpu_cores_used": used / load.duration_s if load.duration_s else None}


def predict(cpu_ms_per_request: float, cores: int, redis_ms_per_request: float | None
            ) -> dict[str, Any]:
    """Requests per second of one router pod with ``cores`` workers: each worker is bound by
    its own CPU per request (nothing per request is shared but the backends and Redis), so
    ``cores * 1000 / cpu_ms_per_request``; Redis, one core, caps the pods it serves at
    ``1000 / redis_ms_per_request``."""
    rps = cores * 1e3 / cpu_ms_per_request
    cap = None if not redis_ms_per_request else 1e3 / redis_ms_per_request
    return {"cores": cores, "rps": rps, "redis_cap_rps": cap}


def workers_throughput(workdir: Path, duration_s: int) -> dict[str, Any]:
    """Both runs, the same upstream, the same load."""
    wrk = wrk_path()
    upstream = start_upstream(workdir)
    try:
        runs = [_one(workdir, upstream.url, n, duration_s, wrk) for n in (1, 2)]
    finally:
        upstream.service.stop()
    one, two = runs
    return {
        "load": "wrk" if wrk else "python closed loop",
        "connections": CONNECTIONS,
        "duration_s": duration_s,
        "runs": runs,
        "throughput_ratio": two["rps"] / one["rps"] if one["rps"] else None,
        "cpu_ratio": (two["cpu_ms_per_request"] / one["cpu_ms_per_request"]
                      if one["cpu_ms_per_request"] and two["cpu_ms_per_request"] else None),
    }
