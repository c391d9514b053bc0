"""The engine on the event loop: one timer for the head of the queue, one future per waiter.

:class:`LiveSchedule` wraps a pure :class:`~lpu_emulator.engine.Engine`. It keeps
a single timer armed for the virtual start of the head of the queue; when it
fires, the engine admits every job whose start has come (at its virtual start,
so a late timer changes nothing) and their waiters wake. A withdrawal (client
gone, crash) frees the slot at once, which may admit the next job at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lpu_emulator.engine import Engine, Job, JobState, LoadSnapshot
from lpu_protocol.artifact import Artifact

__all__ = ["LiveSchedule"]


class LiveSchedule:
    """An :class:`Engine` driven by the running event loop. Not thread-safe."""

    def __init__(self, artifact: Artifact, clock: Callable[[], float]) -> None:
        self.artifact = artifact
        self.engine = Engine(artifact)
        self._clock = clock
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._idle: asyncio.Event | None = None

    def submit(self, output_tokens: int) -> Job:
        """Place a request now; it is RUNNING at once or WAITING for :meth:`admitted`."""
        job = self.engine.submit(self._clock(), output_tokens)
        if job.state is JobState.WAITING:
            self._waiters[job.id] = asyncio.get_running_loop().create_future()
        self._sync()
        return job

    def advance(self) -> None:
        """Bring the engine to now (admissions due wake their waiters)."""
        self.engine.advance(self._clock())
        self._sync()

    def snapshot(self) -> LoadSnapshot:
        snap = self.engine.snapshot(self._clock())
        self._sync()
        return snap

    async def admitted(self, job: Job) -> None:
        """Return once ``job`` holds a slot (at its virtual start, or at once if it does)."""
        fut = self._waiters.get(job.id)
        if fut is not None:
            await fut

    def withdraw(self, job: Job) -> bool:
        """The request is gone: leave the queue or free the slot now.

        Returns True when this withdrew a job that was still waiting or running.
        """
        now = self._clock()
        live = job.state is JobState.WAITING or (job.state is JobState.RUNNING and job.end > now)
        self._waiters.pop(job.id, None)
        self.engine.cancel(job, now)
        self._sync()
        return live

    def finished(self, job: Job) -> None:
        """The request's handler is done with a job that ran to its end."""
        self._waiters.pop(job.id, None)
        self.engine.advance(self._clock())
        self._sync()

    async def drained(self) -> None:
        """Return when no job runs or waits (virtual time)."""
        while True:
            now = self._clock()
            self.engine.advance(now)
            self._sync()
            idle_at = self.engine.idle_at()
            if idle_at <= now:
                return
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=idle_at - now)
            except TimeoutError:
                pass
            finally:
                self._idle = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- internals ---------------------------------------------------------

    def _sync(self) -> None:
        """After any engine call: wake the newly admitted, re-arm the timer, signal idle."""
        self._wake(self.engine.take_admitted())
        self._arm()
        self._check_idle()

    def _wake(self, jobs: list[Job]) -> None:
        for job in jobs:
            fut = self._waiters.pop(job.id, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _arm(self) -> None:
        at = self.engine.next_admission()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, at - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.advance(self._clock())
        self._sync()

    def _check_idle(self) -> None:
        if self._idle is not None and self.engine.idle_at() <= self._clock():
            self._idle.set()
