"""Experiment 1's processes ahead of other sessions' work: SCHED_FIFO while a point runs.

Below capacity the rig adds a few ms to each TTFT, and at rho 0.5 its p99 is what decides
the point. A request wakes a process six times (the load generator's send timer, the
router's read, the emulator's read, the emulator's first-token timer, the router's relay,
the load generator's read); measured at rho 0.5 (``/proc/PID/schedstat``), each wake-up
waited 160-300 us on the run queue on average with other sessions' CPU work beside it (a
profiler held one core throughout one run), 8-19 us under SCHED_FIFO. The scheduling
class changes when a woken process gets a core, not what it does: the router, emulator
and load generator run the same code; the three still share the two cores with each
other (FIFO at one priority does not preempt itself). Where the class cannot be set (not
root, no CAP_SYS_NICE) the point runs as before and says so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["PRIORITY", "realtime", "threads_of"]

PRIORITY = 10
"""SCHED_FIFO priority: above every SCHED_OTHER task, below the kernel's own (50+)."""


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def threads_of(pids: Iterable[int]) -> list[int]:
    """Thread ids of the processes ``pids`` and of all their descendants (those alive now;
    a process gone meanwhile is skipped)."""
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        try:
            out += [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
            todo += _children(pid)
        except OSError:
            continue
    return out


@contextlib.contextmanager
def realtime(pids: Iterable[int], priority: int = PRIORITY) -> Iterator[str]:
    """Run the calling thread and every thread of ``pids`` (descendants included) under
    SCHED_FIFO at ``priority``; threads the calling thread starts meanwhile inherit it.
    Yields what is in force: ``"SCHED_FIFO <priority>"``, or ``"SCHED_OTHER (<why>)"`` when
    the calling thread may not take the class (then nothing is changed). On exit the calling
    thread gets its previous class back (``pids`` are the caller's to stop)."""
    before = os.sched_getscheduler(0)
    before_prio = os.sched_getparam(0).sched_priority
    param = os.sched_param(priority)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, param)
    except OSError as exc:
        yield f"SCHED_OTHER ({exc.strerror or type(exc).__name__})"
        return
    try:
        for tid in threads_of(pids):
            with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
                os.sched_setscheduler(tid, os.SCHED_FIFO, param)
        yield f"SCHED_FIFO {priority}"
    finally:
        os.sched_setscheduler(0, before, os.sched_param(before_prio))
