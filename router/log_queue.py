"""The process's log output: records are queued by the thread that logs them and written by one
listener thread, so no write to stderr (and for the access log no JSON encoding) happens on the
event loop.

:func:`start` puts one :class:`logging.handlers.QueueHandler` on the root logger and starts one
:class:`logging.handlers.QueueListener` whose handler writes :data:`LINE_FORMAT` lines to stderr
(access lines are JSON already; the lines are the ones ``logging.basicConfig`` with that format
wrote). Every process that runs the router's loop starts it once, in :func:`router.__main__._run`
(``serve`` and ``demo``; reload generations share their process's): a second :func:`start` in one
process is an error. A forked child gets a listener of its own, since the parent's thread does
not survive a fork (and the lines queued before the fork are the parent's to write).

:func:`stop` (in a ``finally``, and at exit) first puts the writing handler on the root logger
itself, so a line logged from then on is written at once, then waits until the listener has
written every line queued before: no line is lost at a SIGTERM drain or a normal exit.

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


@dataclass(slots=True)
class _Output:
    enqueue: _Enqueue
    listener: QueueListener
    writer: logging.Handler
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
    writer = logging.StreamHandler(stream)
    writer.setFormatter(logging.Formatter(LINE_FORMAT))
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    enqueue = _Enqueue(lines)
    listener = QueueListener(lines, writer)
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
    out.listener.stop()  # writes what was queued before the sentinel, then joins the thread
    out.writer.flush()


def _after_fork_in_child() -> None:
    out = _output
    if out is None or out.pid == os.getpid():
        return
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    out.enqueue.queue = lines
    out.listener = QueueListener(lines, out.writer)
    out.listener.start()
    out.pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
