"""One worker process of a pod (``server.workers`` > 1): what ``python -m router worker``
runs, started by the supervisor of :mod:`router.workers`.

A worker serves exactly as a single router process does (:func:`router.server.serve_forever`:
its own generations, drain on SIGTERM, reload on SIGHUP), with three differences:

* it listens on its own ``SO_REUSEPORT`` socket on the port the supervisor reserved, so the
  kernel spreads new connections over the workers;
* it keeps one metric catalog for its lifetime, written into the pod's multiprocess directory
  (prometheus-client was imported with ``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor), so
  a scrape of any worker answers for the pod, and its function-read gauges are sampled
  (:mod:`router.gauge_sampler`) every half second, at a scrape it answers, and after its drain;
* it says it is ready on its standard output (:func:`ready_line`, read by the supervisor) and
  ends when its supervisor does (``PR_SET_PDEATHSIG`` on Linux: a SIGTERM, so it drains).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path

from router.config import RouterConfig
from router.worker_id import WorkerId

__all__ = ["READY_PREFIX", "die_with_parent", "ready_line", "serve_worker"]

log = logging.getLogger("lpu_router.worker")

READY_PREFIX = "lpu-router worker ready "
"""A worker's line on its standard output once it serves: the prefix, then its URL."""
_PR_SET_PDEATHSIG = 1


def ready_line(url: str) -> str:
    return READY_PREFIX + url


def die_with_parent(parent_pid: int) -> None:
    """Get a SIGTERM when the supervisor ``parent_pid`` ends, however it ends (Linux; elsewhere
    nothing); exit at once if it is gone already."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        raise SystemExit("lpu-router worker: the supervisor is gone")


async def serve_worker(config: RouterConfig, *, config_path: str | Path, worker: WorkerId,
                       port: int, multiprocess_dir: str) -> None:
    """Serve ``config`` as worker ``worker.index`` on ``port`` until SIGTERM (then drain)."""
    from router.app import build_app
    from router.metrics import make_metrics
    from router.server import serve_forever

    metrics = make_metrics(multiprocess_dir=multiprocess_dir)
    metrics.worker_info.labels(str(worker.index)).set(1)
    assert metrics.sampler is not None
    sampler = asyncio.create_task(metrics.sampler.run(), name="lpu-router-gauge-sampler")

    def ready(url: str) -> None:
        print(ready_line(url), flush=True)

    try:
        await serve_forever(config, on_ready=ready, config_path=config_path,
                            build=partial(build_app, metrics=metrics, worker=worker),
                            port=port, reuse_port=True)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        metrics.sampler.sample()  # drained: the pod's gauges no longer count this worker's
