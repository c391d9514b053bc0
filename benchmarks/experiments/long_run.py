"""One open-loop Poisson run that goes on until its figures are precise enough.

The arrival times of the whole run (up to its cap) are drawn in advance, as for any
open-loop run, and sent in consecutive segments of ``segment_s``: segment ``j`` is handed
to the load generator at ``j * segment_s`` from the start while the previous one is still
draining, so the server sees one continuous arrival stream and never an empty pause. When
a segment has drained, ``enough`` is asked about everything recorded so far; once it says
yes (or the cap is reached) no further segment is started. The records come back as one
:class:`~benchmarks.experiments.drive.Measured` on the run's own time axis (seconds from
its start).

With ``request_ids``, request ``i`` of segment ``j`` is sent with ``x-request-id: sj-i``
(:attr:`LongRun.request_ids`, in the order of the records), and :attr:`LongRun.origin_mono`
places the run's time axis on ``time.monotonic`` (the emulator's schedule clock, the same
clock in every process of a Linux machine), so each request can be found on the emulator's
recorded schedule and its times compared with the client's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np
import numpy.typing as npt

from benchmarks.experiments import SweepConfig
from benchmarks.experiments.drive import Measured
from benchmarks.loadgen import LoadConfig, RunResult, run_load
from benchmarks.prompts import PromptFactory
from benchmarks.workload import PlannedRequest

__all__ = ["LongRun", "concat", "run_until"]

FloatArray = npt.NDArray[np.float64]
_LEAD_S = 0.2
"""The first segment starts this long after the call (connections are not yet open)."""


@dataclass(frozen=True, slots=True)
class LongRun:
    measured: Measured
    stopped_by: str
    """``"enough"`` (the rule was met) or ``"cap"`` (the arrivals ran out first)."""
    sent_s: float
    """Seconds of arrivals that were sent."""
    request_ids: list[str] | None = None
    """Each record's ``x-request-id`` (with ``request_ids=True``), in the records' order."""
    origin_mono: float = float("nan")
    """``time.monotonic()`` at the run's time 0: a record's time ``t`` happened at
    ``origin_mono + t`` on that clock."""


def concat(parts: Sequence[tuple[float, Measured]]) -> Measured:
    """``(offset, part)`` pairs as one run: each part's times shifted by its offset."""
    return Measured(
        intended=np.concatenate([p.intended + off for off, p in parts]),
        sent=np.concatenate([p.sent + off for off, p in parts]),
        ttft=np.concatenate([p.ttft for _, p in parts]),
        completed=np.concatenate([p.completed for _, p in parts]),
        rejected=np.concatenate([p.rejected for _, p in parts]),
        prompt_tokens=np.concatenate([p.prompt_tokens for _, p in parts]),
    )


async def run_until(url: str, cfg: SweepConfig, times: FloatArray, *, segment_s: float,
                    enough: Callable[[Measured], bool], seed: int,
                    max_tokens: int | None = None, request_ids: bool = False) -> LongRun:
    """Send the arrivals ``times`` (sorted seconds from the start) in segments until
    ``enough`` holds for what has been measured or every arrival has been sent (module
    docstring for ``request_ids``)."""
    if segment_s <= 0:
        raise ValueError(f"segment_s must be > 0, got {segment_s!r}")
    tokens = max_tokens or cfg.output_tokens
    config = LoadConfig(url, cfg.model, drain_timeout_s=60.0)
    prompts = PromptFactory(np.random.default_rng(seed))
    horizon = float(times[-1]) if times.size else 0.0
    segments = max(1, int(np.ceil(horizon / segment_s + 1e-9)))
    parts: list[tuple[float, Measured]] = []
    ids: list[str] = []
    pending: list[asyncio.Task[RunResult]] = []
    stopped_by = "cap"
    sent_s = 0.0

    async def collect(t0_unix: float) -> bool:
        """Move the drained segments, in order, into ``parts``; ask ``enough``. In a
        thread: judging ~10^5 records takes tens of ms, which on the loop would delay the
        sends of the segment in flight."""
        while pending and pending[0].done():
            result = pending.pop(0).result()
            parts.append((result.started_unix - t0_unix, Measured.of(result.records)))
            if request_ids:
                ids.extend(f"s{len(parts) - 1}-{r.index}" for r in result.records)
        return bool(parts) and await asyncio.to_thread(lambda: enough(concat(parts)))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        t0_unix = time.time() + _LEAD_S
        # Wall and monotonic clocks read together: the run's origin on the monotonic clock.
        origin_mono = t0_unix - time.time() + time.monotonic()
        for j in range(segments):
            await asyncio.sleep(max(0.0, t0_unix + j * segment_s - time.time()))
            begin = time.time() - t0_unix
            lo, hi = j * segment_s, (j + 1) * segment_s
            seg = times[(times >= lo) & (times < hi)]
            planned = [PlannedRequest(i, max(float(t) - begin, 0.0), cfg.prompt_tokens, tokens)
                       for i, t in enumerate(seg)]
            seg_config = (dataclasses.replace(config, request_id_prefix=f"s{j}-")
                          if request_ids else config)
            pending.append(asyncio.create_task(run_load(planned, seg_config, prompts,
                                                        session=session)))
            sent_s = min(hi, horizon)
            if len(pending) > 1:
                # The previous segment drains while this one sends: judge it as soon as it
                # has, and in any case before the next segment is due.
                due = t0_unix + (j + 1) * segment_s - time.time() - 0.05
                await asyncio.wait({pending[0]}, timeout=max(due, 0.0))
            if await collect(t0_unix):
                stopped_by = "enough"
                break
        if pending:
            await asyncio.wait(set(pending))
        if await collect(t0_unix):  # the segments still draining count too
            stopped_by = "enough"
    return LongRun(concat(parts), stopped_by, sent_s, ids if request_ids else None,
                   origin_mono)
