"""A long run with ``request_ids`` (:func:`benchmarks.experiments.long_run.run_until`): every
record's ``x-request-id`` is on the emulator's recorded schedule, and the run's time axis placed
on the emulator's clock (``origin_mono``) keeps each request's causal order: intended <= sent
<= arrival at the emulator <= its first token's due time <= the client's read of it. Nothing
is timed; a wrong origin (off by more than the loopback's latency) breaks the order."""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest

from benchmarks.experiments import SweepConfig
from benchmarks.experiments.long_run import run_until
from benchmarks.experiments.rig import Pool, serve
from benchmarks.schedule_polling import read_schedule


@pytest.mark.timeout(60)
async def test_request_ids_find_each_request_on_the_schedule() -> None:
    cfg = SweepConfig(isolate=False)
    times = np.sort(np.random.default_rng(2).uniform(0.0, 2.0, 30))
    pool = Pool("main", cfg.artifact(2), 1, {"ttft_slo_s": 10.0})
    async with serve(cfg, [pool], {"mode": "off"}) as stack:
        run = await run_until(stack.url, cfg, times, segment_s=1.0, enough=lambda m: False,
                              seed=1, request_ids=True)
        async with aiohttp.ClientSession() as s:
            schedule = await read_schedule(s, stack.backends["main"][0])
    entries = {e["request_id"]: e for e in schedule}
    m, ids = run.measured, run.request_ids
    assert ids is not None and len(ids) == m.intended.size == times.size
    assert len(set(ids)) == len(ids) and set(ids) <= set(entries)
    assert m.completed.all()
    arrival = np.array([entries[i]["arrival"] for i in ids]) - run.origin_mono
    due = np.array([entries[i]["first_token"] for i in ids]) - run.origin_mono
    assert np.all(m.intended <= m.sent) and np.all(m.sent <= arrival)
    assert np.all(arrival <= due) and np.all(due <= m.intended + m.ttft)
