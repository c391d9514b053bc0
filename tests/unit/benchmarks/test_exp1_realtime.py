"""Experiment 1's scheduling class (:mod:`benchmarks.experiments.exp1_realtime`): a real
process tree takes SCHED_FIFO on every thread, the calling thread gets its class back, and
where the class is refused nothing changes and the point says so."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks.experiments import exp1_realtime
from benchmarks.experiments.exp1_realtime import realtime, threads_of

# A process with a second thread and a child process, all sleeping until killed.
_TREE = (
    "import subprocess, sys, threading, time\n"
    "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _may_take_fifo() -> bool:
    before, prio = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        return False
    os.sched_setscheduler(0, before, os.sched_param(prio))
    return True


def test_every_thread_of_the_tree_and_the_caller_run_fifo_then_the_caller_is_restored() -> None:
    if not _may_take_fifo():
        pytest.skip("SCHED_FIFO needs root or CAP_SYS_NICE here")
    proc = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        deadline = time.monotonic() + 10
        while len(threads_of([proc.pid])) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # the thread and the child may still be starting
        tids = threads_of([proc.pid])
        assert child in tids and proc.pid in tids and len(tids) == 3
        before = os.sched_getscheduler(0)
        with realtime([proc.pid]) as what:
            assert what == f"SCHED_FIFO {exp1_realtime.PRIORITY}"
            assert os.sched_getscheduler(0) == os.SCHED_FIFO
            assert {os.sched_getscheduler(t) for t in tids} == {os.SCHED_FIFO}
            assert {os.sched_getparam(t).sched_priority for t in tids} == {
                exp1_realtime.PRIORITY}
        assert os.sched_getscheduler(0) == before
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_a_refused_class_changes_nothing_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        calls.append(pid)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with realtime([os.getpid()]) as what:
        assert what == "SCHED_OTHER (Operation not permitted)"
    assert calls == [0]  # only the caller's own attempt; no other thread was touched


def test_threads_of_a_process_gone_is_empty() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert threads_of([proc.pid]) == []
