"""The ``/load`` poll: what every backend says about its own schedule, fed to admission and health.

With admission ``timeline`` the router GETs ``/load`` on every backend URL (once per URL, even when
it serves several buckets) every ``admission.load_poll_interval_s`` seconds, each with a
``health.timeout_s`` budget. One poll feeds two consumers, so there is one active check, not two:

* the timeline controller: :meth:`~router.admission.controller.TimelineAdmitter.observe_load`
  for every bucket the URL serves, with ``sent_at`` = when the poll was sent and ``now`` = when
  the answer came (both on the router's clock: the merge errs late, never early);
* backend health: :meth:`~router.pool.BackendPool.set_probe_url` -- a valid report with
  ``"ready": true`` marks the backend up; ``"ready": false``, an error, a timeout, a non-200
  status or a malformed report mark it down until a later poll succeeds (the pool's own rules:
  passive ejection after failed requests still applies on top).

A backend without ``/load`` (404) is polled on ``health.path`` instead (200 = up) and admission
runs on the router's own reservations alone for it. Each URL has its own loop, so a backend that
answers slowly delays only its own next poll; the next poll is due one interval after the
previous one was *sent*, so polls do not drift and do not burst after a stall.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp

from router.admission.load import LoadReport
from router.pool import BackendPool

__all__ = ["LoadPoller", "LoadSink"]

log = logging.getLogger("lpu_router.load")

LOAD_PATH = "/load"


class LoadSink(Protocol):
    """Who takes the reports: the timeline controller."""

    def observe_load(self, bucket: str, backend: str, report: LoadReport | Mapping[str, Any],
                     now: float, *, sent_at: float | None = None) -> None: ...


class LoadPoller:
    """Polls every backend's ``/load``; run :meth:`run` as one task per app (cancel to stop)."""

    def __init__(self, pool: BackendPool, sink: LoadSink, *, interval_s: float,
                 timeout_s: float, health_path: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._sink = sink
        self._interval = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._health_path = health_path
        self._clock = clock
        self._no_load: set[str] = set()
        """Backends that answered 404 on ``/load``: probed on ``health.path`` instead."""
        self._failing: dict[str, str] = {}
        """Why each failing backend's last poll failed (logged when it changes)."""

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Poll forever; one loop per backend URL."""
        await asyncio.gather(*(self._loop(session, url) for url in self._pool.urls()))

    async def _loop(self, session: aiohttp.ClientSession, url: str) -> None:
        while True:
            sent = self._clock()
            try:
                await self.poll(session, url)
            except Exception:  # a bug here must not stop health checking for good
                log.exception("load poll of %s failed", url)
            await asyncio.sleep(max(0.0, sent + self._interval - self._clock()))

    async def poll(self, session: aiohttp.ClientSession, url: str) -> bool:
        """One poll of ``url``; True when the backend is up (a ready report or a 200 probe)."""
        path = self._health_path if url in self._no_load else LOAD_PATH
        sent = self._clock()
        try:
            async with session.get(url + path, timeout=self._timeout) as resp:
                body = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return self._down(url, f"GET {path}: {type(exc).__name__}: {exc}")
        now = self._clock()
        if path != LOAD_PATH:
            return self._up(url) if status == 200 else self._down(url, f"GET {path}: {status}")
        if status == 404:
            self._no_load.add(url)
            log.warning("%s has no %s: probing %s instead; admission uses the router's own"
                        " reservations only for it", url, LOAD_PATH, self._health_path)
            return await self.poll(session, url)
        if status != 200:
            return self._down(url, f"GET {LOAD_PATH}: {status}")
        try:
            raw = json.loads(body)
            if not isinstance(raw, Mapping):
                raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
            report = LoadReport.from_mapping(raw)
        except ValueError as exc:
            return self._down(url, f"GET {LOAD_PATH}: {exc}")
        for bucket in self._pool.buckets_of(url):
            self._sink.observe_load(bucket, url, report, now, sent_at=sent)
        if not report.ready:
            return self._down(url, "not ready (its report says so)")
        return self._up(url)

    def _up(self, url: str) -> bool:
        if self._failing.pop(url, None) is not None:
            log.info("%s answers its polls again", url)
        self._pool.set_probe_url(url, True)
        return True

    def _down(self, url: str, why: str) -> bool:
        if self._failing.get(url) != why:
            self._failing[url] = why
            log.warning("load poll of %s failed: %s", url, why)
        self._pool.set_probe_url(url, False)
        return False
