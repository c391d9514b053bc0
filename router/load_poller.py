"""The active checks: every backend checked on a timer, feeding health and (``timeline``) admission.

One loop per backend URL (once per URL, even when it serves several buckets) runs
:meth:`~router.probe.Prober.check`, each with a ``health.timeout_s`` budget: every
``load_interval_s`` (``admission.load_poll_interval_s``) while there is a timeline to feed and the
backend's check is ``/load`` (or not found yet), else every ``interval_s`` (``health.interval_s``:
a health endpoint says nothing worth polling 20 times a second for). Both admission modes check
the same way (router/probe.py: ``/load`` when the backend has an LPU one, else ``/readyz``,
``/health`` or ``/v1/models``), and one check feeds two consumers:

* backend health: :meth:`~router.pool.BackendPool.set_probe_url` -- up or down as the check says
  (the pool's own rules, passive ejection after failed requests, still apply on top), and the
  artifact identity of a ``/load`` report: :meth:`~router.pool.BackendPool.set_identity`
  (before the report reaches admission, so a replica of the wrong shape is never admitted to);
* the timeline controller, when there is one and the check is ``/load``: every report (ready or
  not) goes to :meth:`~router.admission.controller.TimelineAdmitter.observe_load` for every
  bucket the URL serves, with ``sent_at`` = when the poll was sent and ``now`` = when the answer
  came (both on the router's clock: the merge errs late, never early). A backend without one
  gets none: admission runs on the router's own reservations alone for it.

A backend that answers slowly delays only its own next check; the next one is due one interval
after the previous one was *sent*, so checks do not drift and do not burst after a stall.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp

from lpu_protocol.load_report import LoadReport
from router.pool import BackendPool
from router.probe import LOAD_PATH, Prober

__all__ = ["LoadPoller", "LoadSink"]

log = logging.getLogger("lpu_router.load")


class LoadSink(Protocol):
    """Who takes the reports: the timeline controller. The poller hands over validated
    reports only (the prober parsed them with :meth:`LoadReport.from_mapping`)."""

    def observe_load(self, bucket: str, backend: str, report: LoadReport, now: float, *,
                     sent_at: float | None = None) -> None: ...


class LoadPoller:
    """Checks every backend of ``pool``; run :meth:`run` as one task per app (cancel to stop).

    ``sink`` None (admission ``off``): the checks feed health only.
    """

    def __init__(self, pool: BackendPool, sink: LoadSink | None, *, prober: Prober,
                 interval_s: float, load_interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._sink = sink
        self._prober = prober
        self._interval = interval_s
        self._load_interval = load_interval_s
        self._clock = clock
        self._failing: dict[str, str] = {}
        """Why each failing backend's last check failed (logged when it changes)."""

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Check forever; one loop per backend URL."""
        await asyncio.gather(*(self._loop(session, url) for url in self._pool.urls()))

    async def _loop(self, session: aiohttp.ClientSession, url: str) -> None:
        while True:
            sent = self._clock()
            try:
                await self.poll(session, url)
            except Exception:  # a bug here must not stop health checking for good
                log.exception("active check of %s failed", url)
            await asyncio.sleep(max(0.0, sent + self.interval_of(url) - self._clock()))

    def interval_of(self, url: str) -> float:
        """Seconds from one check of ``url`` to the next."""
        if self._sink is not None and self._prober.path_of(url) in (None, LOAD_PATH):
            return self._load_interval
        return self._interval

    async def poll(self, session: aiohttp.ClientSession, url: str) -> bool:
        """One check of ``url``, published; True when the backend is up."""
        check = await self._prober.check(session, url)
        if check.report is not None:
            self._pool.set_identity(url, check.report)
        if check.report is not None and self._sink is not None:
            for bucket in self._pool.buckets_of(url):
                self._sink.observe_load(bucket, url, check.report, check.received_at,
                                        sent_at=check.sent_at)
        if check.ok:
            if self._failing.pop(url, None) is not None:
                log.info("%s answers its checks again", url)
        elif self._failing.get(url) != check.why:
            self._failing[url] = check.why
            log.warning("active check of %s failed: %s", url, check.why)
        self._pool.set_probe_url(url, check.ok)
        return check.ok
