"""The process's log output: records are queued by the thread that logs them and written by one
listener thread, so no write to stderr (and for the access log no JSON encoding) happens on the
event loop.

:func:`start` puts one :class:`logging.handlers.QueueHandler` on the root logger and starts one
:class:`logging.handlers.QueueListener` whose handler writes :data:`LINE_FORMAT` lines to stderr
(access lines are JSON already; the lines are the ones ``logging.basicConfig`` with that format
wrote). The listener writes the lines it has gathered in one write per batch (see
:data:`_GATHER_S`): a thread wake-up per line costs the process more CPU than the synchronous
write it replaces. Every process that runs the router's loop starts it once, in
:func:`router.__main__._run` (``serve`` and ``demo``; reload generations share their
process's): a second :func:`start` in one process is an error. A forked child gets a listener
of its own, since the parent's thread does not survive a fork (and the lines queued before the
fork are the parent's to write).

:func:`stop` (in a ``finally``, and at exit) first puts the writing handler on the root logger
itself, so a line logged from then on is not lost, then waits until the listener has written
every line queued before, and from then on each line is written at once: no line is lost at a
SIGTERM drain or a normal exit.

A record whose message is a :class:`Deferred` is queued as it is, and its text (``str(msg)``) is
made on the listener thread. Any other record is prepared as the standard handler prepares it
(its message formatted by the thread that logs it), so arguments changed afterwards do not change
its line; such records are rare (warnings, errors), access lines are one per request.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import select
import time
from dataclasses import dataclass
from logging.handlers import QueueHandler, QueueListener
from typing import TextIO

__all__ = ["LINE_FORMAT", "Deferred", "running", "start", "stop"]

LINE_FORMAT = "%(message)s"


class Deferred:
    """A log message whose text, ``str(message)``, is made when its line is written, maybe on
    another thread: an instance must hold an immutable snapshot of what it will say."""

    __slots__ = ()


class _Enqueue(QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The standard prepare formats the message and copies the record on the logging
        # thread; a Deferred message is a snapshot already, made into text by the listener.
        if isinstance(record.msg, Deferred) and not record.args:
            return record
        prepared: logging.LogRecord = super().prepare(record)
        return prepared


def _atomic_pieces(lines: list[str], limit: int = select.PIPE_BUF) -> list[str]:
    """``lines`` joined into writes of at most ``limit`` bytes that end at a line's end (a
    longer line alone). The worker processes of one router (router.workers) share one stderr
    pipe, and only a write of at most ``PIPE_BUF`` bytes to a pipe is never interleaved with
    another process's: so no line is ever cut by another worker's."""
    pieces: list[str] = []
    part: list[str] = []
    size = 0
    for line in lines:
        n = len(line) if line.isascii() else len(line.encode())
        if part and size + n > limit:
            pieces.append("".join(part))
            part, size = [], 0
        part.append(line)
        size += n
    if part:
        pieces.append("".join(part))
    return pieces


class _Writer(logging.StreamHandler[TextIO]):
    """Writes :data:`LINE_FORMAT` lines to a stream. While ``batching`` (on the listener thread)
    it keeps them until :meth:`flush`, so one write carries every line of a batch; otherwise it
    writes each at once."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter(LINE_FORMAT))
        self.batching = True
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not self.batching:
            super().emit(record)
            return
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.acquire()
        try:
            pending, self._pending = self._pending, []
            for text in _atomic_pieces(pending):
                self.stream.write(text)
                super().flush()
            if not pending:
                super().flush()
        except (OSError, ValueError):
            pass  # stderr closed or gone: nowhere left to say so
        finally:
            self.release()


_GATHER_S = 0.005
"""After a quiet spell, the first line wakes the listener, which then waits this long for the
lines that follow it: one wake-up and one write for all of them, instead of a thread switch (and
the GIL handed over twice) per line. Lines reach stderr at most this much later."""


class _Listener(QueueListener):
    def __init__(self, lines: queue.SimpleQueue[logging.LogRecord | None], writer: _Writer
                 ) -> None:
        super().__init__(lines, writer)
        self.lines = lines
        self.writer = writer

    # The stubs type the result LogRecord, but the base class's own sentinel is None.
    def dequeue(self, block: bool) -> logging.LogRecord | None:  # type: ignore[override]
        """The next record, or None: :meth:`stop`'s sentinel, which ends the thread."""
        try:
            got = self.lines.get_nowait()
        except queue.Empty:
            self.writer.flush()  # what this batch took, in one write
            got = self.lines.get()
            time.sleep(_GATHER_S)
        if got is None:
            self.writer.flush()
        return got


@dataclass(slots=True)
class _Output:
    enqueue: _Enqueue
    listener: _Listener
    writer: _Writer
    pid: int


_output: _Output | None = None


def running() -> bool:
    """Whether this process's log listener is running."""
    return _output is not None


def start(level: int | str, stream: TextIO | None = None) -> None:
    """Log records of ``level`` and up, from every logger, as lines on ``stream`` (None:
    ``sys.stderr``) written by one listener thread. Raise :class:`RuntimeError` if this
    process's listener is running already."""
    global _output
    if _output is not None:
        raise RuntimeError("the log listener is already running in this process")
    # Lines carry the message only (LINE_FORMAT): skip what each record would otherwise collect
    # on the logging thread, the caller's frame (a stack walk) above all. These are the logging
    # HOWTO's "Optimization" switches.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    writer = _Writer(stream)
    lines: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    enqueue = _Enqueue(lines)
    listener = _Listener(lines, writer)
    listener.start()
    root = logging.getLogger()
    root.setLevel(level.upper() if isinstance(level, str) else level)
    root.addHandler(enqueue)
    _output = _Output(enqueue, listener, writer, os.getpid())
    atexit.register(stop)


def stop() -> None:
    """Write every queued line and end the listener; from then on the root logger writes lines
    itself (synchronously). Nothing when no listener runs."""
    global _output
    out, _output = _output, None
    if out is None:
        return
    root = logging.getLogger()
    root.addHandler(out.writer)
    root.removeHandler(out.enqueue)
    out.listener.stop()  # handles what was queued before the sentinel, then joins the thread
    out.writer.acquire()
    try:
        out.writer.batching = False
    finally:
        out.writer.release()
    out.writer.flush()


def _after_fork_in_child() -> None:
    out = _output
    if out is None or out.pid == os.getpid():
        return
    lines: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    out.enqueue.queue = lines
    out.writer._pending = []  # the parent's to write
    out.listener = _Listener(lines, out.writer)
    out.listener.start()
    out.pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
