"""The engine on the event loop: no admission is ever lost, whoever made it."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from lpu_emulator.engine import JobState
from lpu_emulator.schedule import LiveSchedule
from lpu_protocol.artifact import builtin_artifact

# service_time(11) = 50 + 10 * 5 = 100 virtual seconds: the real timer never fires in a test.
ART = replace(builtin_artifact("llama-3.1-8b-2k"), slots=1, prefill_s=50.0, per_token_s=5.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _admitted_soon(schedule: LiveSchedule, job: object) -> bool:
    try:
        await asyncio.wait_for(schedule.admitted(job), 1.0)  # type: ignore[arg-type]
    except TimeoutError:
        return False
    return True


async def test_an_admission_made_by_another_call_wakes_its_waiter() -> None:
    clock = FakeClock()
    schedule = LiveSchedule(ART, clock)
    first = schedule.submit(11)
    second = schedule.submit(11)
    assert (first.state, second.state) == (JobState.RUNNING, JobState.WAITING)
    clock.now = 100.5  # the head's start passed, its timer has not fired (yet)
    schedule.submit(11)  # this call's advance admits the second job
    assert second.state is JobState.RUNNING
    assert second.start == 100.0
    assert await _admitted_soon(schedule, second)
    schedule.close()


async def test_a_snapshot_admission_wakes_its_waiter() -> None:
    clock = FakeClock()
    schedule = LiveSchedule(ART, clock)
    schedule.submit(11)
    second = schedule.submit(11)
    clock.now = 100.0
    snap = schedule.snapshot()
    assert (snap.running, snap.waiting) == (1, 0)
    assert await _admitted_soon(schedule, second)
    schedule.close()


async def test_withdrawing_the_running_job_admits_the_next_now() -> None:
    clock = FakeClock()
    schedule = LiveSchedule(ART, clock)
    first = schedule.submit(11)
    second = schedule.submit(11)
    clock.now = 7.0
    assert schedule.withdraw(first)
    assert second.start == 7.0
    assert await _admitted_soon(schedule, second)
    assert not schedule.withdraw(first)  # already gone
    schedule.close()


async def test_drained_returns_when_the_last_job_is_withdrawn() -> None:
    clock = FakeClock()
    schedule = LiveSchedule(ART, clock)
    job = schedule.submit(11)
    waiter = asyncio.create_task(schedule.drained())
    await asyncio.sleep(0)
    assert not waiter.done()
    schedule.withdraw(job)
    await asyncio.wait_for(waiter, 1.0)
    schedule.close()
