"""Serving replicas from several processes: ``lpu-emulator --replicas N --processes P``.

One process keeps the schedules of all its replicas on one event loop, so a busy loop is late
for all of them at once; a fleet spreads the replicas over ``P`` child processes (by default
one per core the parent may run on, never more than ``N``). The contract:

* Replicas are split into ``P`` contiguous blocks whose sizes differ by at most one
  (:func:`partition`); each replica lives whole in one child, so its schedule, seed
  (``seed + i`` for replica ``i``, as in one process) and port (``port + i``, or ephemeral for
  port 0) are exactly those it has with ``--processes 1``.
* A child is ``lpu-emulator`` itself with ``--processes 1`` and its block's ``--replicas``,
  ``--port`` and ``--seed`` (:func:`child_argv`). The parent prints every child's URL lines
  in replica order once all are ready, the same lines one process prints.
* The parent supervises and never restarts: SIGTERM or SIGINT stops every child and exits 0;
  a child that exits on its own stops the others and makes the parent exit 1 with a message
  naming it (an emulator is a measuring instrument: a missing replica must be loud). Each
  child is killed by the kernel when the parent dies (``PR_SET_PDEATHSIG``), and leads its
  own process group, so a terminal's Ctrl-C reaches the parent only and the parent decides.
  A child's stderr is relayed through the parent, so the parent alone holds the stderr it
  was given: whoever waits for that pipe's end sees it when the parent ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

__all__ = ["Block", "child_argv", "default_processes", "partition", "supervise"]

_PR_SET_PDEATHSIG = 1
_START_S = 60.0
"""Seconds every child has to print its URLs."""
_STOP_S = 10.0
"""Seconds a stopped child has to exit before it is killed."""


@dataclass(frozen=True, slots=True)
class Block:
    """Replicas ``first .. first + count - 1``, served by one child."""

    first: int
    count: int


def default_processes(replicas: int) -> int:
    """One process per core this process may run on, never more than ``replicas``."""
    return max(1, min(replicas, len(os.sched_getaffinity(0))))


def partition(replicas: int, processes: int) -> list[Block]:
    """``replicas`` split into ``processes`` contiguous blocks, in order, sizes differing by
    at most one (the first ``replicas % processes`` blocks hold one more)."""
    if not 1 <= processes <= replicas:
        raise ValueError(f"need 1 <= processes <= replicas, got {processes} and {replicas}")
    size, extra = divmod(replicas, processes)
    blocks: list[Block] = []
    first = 0
    for i in range(processes):
        count = size + (1 if i < extra else 0)
        blocks.append(Block(first, count))
        first += count
    return blocks


def child_argv(argv: Sequence[str], block: Block, port: int, seed: int) -> list[str]:
    """The command line of the child serving ``block``: the parent's arguments, then the
    block's own (argparse keeps the last value of a repeated option)."""
    return [
        *argv, "--processes", "1", "--replicas", str(block.count),
        "--port", str(port + block.first if port else 0), "--seed", str(seed + block.first),
    ]


def _kill_with_parent(parent: int, libc: ctypes.CDLL) -> None:
    """Run in the child between fork and exec: die when the parent dies, with no signal
    blocked (the mask, unlike handlers, survives exec)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


_WATCHED = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


@dataclass
class _Child:
    block: Block
    proc: subprocess.Popen[bytes]
    lines: list[str]
    relay: threading.Thread


def _relay(source: IO[bytes]) -> None:
    """Copy a child's stderr to ours until its end; the parent's signals stay with the
    main thread (it waits for them with sigwait)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    with source:
        for line in source:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()


def _spawn(argv: Sequence[str], blocks: Sequence[Block], port: int, seed: int) -> list[_Child]:
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: nothing to load after it
    parent = os.getpid()
    children: list[_Child] = []
    for block in blocks:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lpu_emulator", *child_argv(argv, block, port, seed)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            process_group=0, preexec_fn=lambda: _kill_with_parent(parent, libc),
        )
        assert proc.stderr is not None
        relay = threading.Thread(target=_relay, args=(proc.stderr,), daemon=True,
                                 name=f"stderr-{proc.pid}")
        relay.start()
        children.append(_Child(block, proc, [], relay))
    return children


def _describe(child: _Child) -> str:
    b = child.block
    return (f"replica process pid {child.proc.pid} (replicas {b.first}..{b.first + b.count - 1})")


def _await_ready(children: Sequence[_Child], deadline: float) -> str | None:
    """Read each child's URL lines (one per replica); the reason when one cannot."""
    buffers = {c.proc.pid: b"" for c in children}
    with selectors.DefaultSelector() as sel:
        for c in children:
            assert c.proc.stdout is not None
            sel.register(c.proc.stdout.fileno(), selectors.EVENT_READ, c)
        waiting = [c for c in children if len(c.lines) < c.block.count]
        while waiting:
            left = deadline - time.monotonic()
            events = sel.select(left) if left > 0 else []
            if not events:
                return f"{_describe(waiting[0])} printed no URL within {_START_S:g} s"
            for key, _ in events:
                c = key.data
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    sel.unregister(key.fd)
                    if len(c.lines) < c.block.count:
                        return f"{_describe(c)} exited with {c.proc.wait()} before it was ready"
                    continue
                pid = c.proc.pid
                buffers[pid] += chunk
                *done, buffers[pid] = buffers[pid].split(b"\n")
                c.lines += [line.decode(errors="replace") for line in done]
            waiting = [c for c in children if len(c.lines) < c.block.count]
    return None


def _stop_all(children: Sequence[_Child]) -> None:
    for c in children:
        if c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                c.proc.terminate()
    deadline = time.monotonic() + _STOP_S
    for c in children:
        try:
            c.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
        if c.proc.stdout is not None:
            c.proc.stdout.close()
        c.relay.join(1.0)


def _exited(children: Sequence[_Child]) -> _Child | None:
    for c in children:
        if c.proc.poll() is not None:
            return c
    return None


def supervise(argv: Sequence[str], replicas: int, processes: int, port: int, seed: int,
              *, out: IO[str] = sys.stdout) -> int:
    """Run the fleet until SIGTERM/SIGINT (exit 0) or a child's exit (exit 1); ``argv`` is
    the parent's command line without the program name. Call from the main thread."""
    watched = _WATCHED
    # SIGCHLD keeps a (no-op) handler so that, blocked, it stays pending for sigwait. Until
    # the children are ready, SIGTERM keeps its default (the parent dies, the kernel kills
    # the children) and SIGINT raises KeyboardInterrupt (the block below stops them).
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: list[_Child] = []
    try:
        children = _spawn(argv, partition(replicas, processes), port, seed)
        failure = _await_ready(children, time.monotonic() + _START_S)
        signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        if failure is None:
            for c in children:
                for line in c.lines:
                    print(line, file=out, flush=True)
        while failure is None:
            gone = _exited(children)
            if gone is not None:
                gone.relay.join(1.0)  # its last words before ours
                failure = f"{_describe(gone)} exited with {gone.proc.returncode}"
                break
            if signal.sigwait(watched) != signal.SIGCHLD:
                return 0
        print(f"lpu-emulator: {failure}; stopping the fleet", file=sys.stderr, flush=True)
        return 1
    finally:
        _stop_all(children)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
