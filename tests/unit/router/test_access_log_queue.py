"""The access log off the loop: one listener per process writes the lines (JSON made there),
byte for byte the line the synchronous log wrote, and none is lost at stop or at SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from logging.handlers import QueueHandler
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from live_processes import served_router, stop

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact
from router import access_log, log_queue
from router.access_log import Exchange

REPO = Path(__file__).resolve().parents[3]
ARTIFACT = builtin_artifact("llama-3.1-8b-2k")


class _Stream(io.StringIO):
    """A text stream that remembers which threads wrote to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[int] = set()

    def write(self, s: str) -> int:
        self.writers.add(threading.get_ident())
        return super().write(s)


@pytest.fixture
def stream() -> Iterator[_Stream]:
    """The log listener running for the test, writing to a fresh stream; the root logger
    restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers.clear()
    out = _Stream()
    log_queue.start("INFO", out)
    try:
        yield out
    finally:
        log_queue.stop()
        root.handlers[:] = handlers
        root.setLevel(level)


def _listener_alone() -> None:
    """Set aside the handlers pytest puts on the root logger for the test's call (they format
    on the caller's thread), as production has none."""
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if isinstance(h, QueueHandler)]


def _exchange(**more: Any) -> Exchange:
    ex = Exchange("req-1", "/v1/chat/completions", started=100.0, wall_start=1_700_000_000.12345,
                  tenant="acme", model="llama-\u00e9", bucket="short",
                  backend="http://127.0.0.1:9001", admitted=True, outcome="completed",
                  status=200, prompt_tokens=812, completion_tokens=128,
                  predicted_ttft_ms=12.34567, ttft_s=0.0134)
    for key, value in more.items():
        setattr(ex, key, value)
    return ex


def test_access_line_is_the_synchronous_logs_line(stream: _Stream) -> None:
    """The line a reader of the log sees: compact JSON in this key order, non-ASCII escaped,
    one per line (what tests/live_processes.py ``access()`` and docs/router.md rely on)."""
    _exchange().log(now=100.25)
    _exchange(request_id="req-2", admitted=False, outcome="cancelled", status=0,
              reject_reason=None, ttft_s=None, predicted_ttft_ms=None).log(now=100.5)
    log_queue.stop()
    first = {"ts": 1700000000.123, "request_id": "req-1", "route": "/v1/chat/completions",
             "model": "llama-\u00e9", "bucket": "short", "backend": "http://127.0.0.1:9001",
             "priority": "standard", "tenant": "acme", "outcome": "completed",
             "reject_reason": None, "status": 200, "prompt_tokens": 812,
             "completion_tokens": 128, "predicted_ttft_ms": 12.346, "ttft_ms": 13.4,
             "e2e_ms": 250.0}
    second = {**first, "request_id": "req-2", "outcome": "cancelled", "status": 499,
              "predicted_ttft_ms": None, "ttft_ms": None, "e2e_ms": 500.0}
    assert stream.getvalue() == "".join(json.dumps(line, separators=(",", ":")) + "\n"
                                        for line in (first, second))
    assert stream.getvalue().startswith('{"ts":1700000000.123,"request_id":"req-1",'
                                        '"route":"/v1/chat/completions","model":"llama-\\u00e9"')


def test_the_loop_thread_only_queues(stream: _Stream, monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON encoding and the write happen on the listener thread, never the caller's; an
    in-process handler still reads the line from the record."""
    encoded_on: set[int] = set()
    line = access_log._line

    def spy(ex: Exchange, now: float) -> str:
        encoded_on.add(threading.get_ident())
        return line(ex, now)

    monkeypatch.setattr(access_log, "_line", spy)
    _listener_alone()
    queued: list[logging.LogRecord] = []
    logger = logging.getLogger("lpu_router.access")
    catch = logging.Handler()
    catch.emit = queued.append  # type: ignore[method-assign]
    logger.addHandler(catch)
    try:
        for i in range(50):
            _exchange(request_id=f"req-{i}").log(now=101.0)
        assert not encoded_on  # nothing made into text yet on this thread
        log_queue.stop()
    finally:
        logger.removeHandler(catch)
    me = threading.get_ident()
    assert encoded_on and me not in encoded_on
    assert stream.writers and me not in stream.writers
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"req-{i}" for i in range(50)]
    assert [r.getMessage() for r in queued] == lines


class _GatedStream(_Stream):
    """A stream whose first write waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.texts: list[str] = []

    def write(self, s: str) -> int:
        self.entered.set()
        assert self.gate.wait(10)
        self.texts.append(s)
        return super().write(s)


def test_lines_queued_while_the_listener_writes_go_out_in_one_write() -> None:
    """One write per batch, not per line: the lines queued while the listener is busy
    writing are all written by its next write."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers.clear()
    out = _GatedStream()
    log_queue.start("INFO", out)
    try:
        log = logging.getLogger("lpu_router.test")
        log.info("first")
        assert out.entered.wait(10)  # the listener is inside the write of "first"
        for i in range(100):
            log.info("line %d", i)
        out.gate.set()
        log_queue.stop()
    finally:
        out.gate.set()
        log_queue.stop()
        root.handlers[:] = handlers
        root.setLevel(level)
    assert out.texts == ["first\n", "".join(f"line {i}\n" for i in range(100))]


def test_a_disabled_access_logger_queues_nothing(stream: _Stream,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    monkeypatch.setattr(access_log, "_Lines", made.append)
    logger = logging.getLogger("lpu_router.access")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        _exchange().log(now=101.0)
    finally:
        logger.setLevel(level)
    assert made == []
    log_queue.stop()
    assert stream.getvalue() == ""


def test_other_records_keep_their_message_at_log_time(stream: _Stream) -> None:
    """A record with arguments is formatted when logged, so later changes do not show, and a
    traceback is written with it."""
    backends = ["a"]
    log = logging.getLogger("lpu_router.test")
    log.warning("backends %s", backends)
    backends.append("b")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    log_queue.stop()
    text = stream.getvalue()
    assert text.startswith("backends ['a']\nfailed\nTraceback (most recent call last):\n")
    assert text.endswith("ValueError: boom\n")


def test_one_listener_per_process_and_lines_after_stop_written_directly(stream: _Stream
                                                                        ) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        log_queue.start("INFO", io.StringIO())
    log_queue.stop()
    assert not log_queue.running()
    logging.getLogger("lpu_router.test").info("after stop")
    assert stream.getvalue() == "after stop\n"
    assert threading.get_ident() in stream.writers


def test_a_forked_child_writes_through_a_listener_of_its_own() -> None:
    """A worker forked from a process whose listener runs writes its own lines, and no line
    the parent had queued is written twice."""
    script = textwrap.dedent("""
        import logging, os, sys
        from router import log_queue
        log_queue.start("INFO")
        log = logging.getLogger("x")
        log.info("parent before fork")
        pid = os.fork()
        if pid == 0:
            for i in range(100):
                log.info("child %d", i)
            log_queue.stop()
            os._exit(0)
        os.waitpid(pid, 0)
        log.info("parent after fork")
        log_queue.stop()
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines.count("parent before fork") == 1
    assert [x for x in lines if x.startswith("child")] == [f"child {i}" for i in range(100)]
    assert lines[-1] == "parent after fork"


def test_the_cli_loop_writes_every_queued_line_before_it_returns() -> None:
    """``router.__main__._run`` (``serve`` and ``demo``): lines queued as the loop ends, far
    more than the listener writes meanwhile, are all written before the process exits."""
    script = textwrap.dedent("""
        from router.__main__ import _run
        from router.access_log import Exchange

        async def burst() -> None:
            for i in range(20000):
                Exchange(f"req-{i}", "/v1/completions", 0.0, 0.0).log(now=0.0)

        _run(burst(), "INFO")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == [f"req-{i}" for i in range(20000)]


async def test_sigterm_loses_no_access_line(tmp_path: Path) -> None:
    """``lpu-router serve``: N requests, then SIGTERM at once: N access lines, one per
    request id, and the drain's last line, written before the process exits 0."""
    n = 40
    options = EmulatorOptions(artifact=ARTIFACT, time_scale=0.01)
    async with start_emulators(options) as urls:
        cfg = tmp_path / "router.toml"
        cfg.write_text(textwrap.dedent(f"""
            [server]
            port = 0
            drain_s = 5.0
            [admission]
            mode = "off"
            [[buckets]]
            name = "short"
            model = "{ARTIFACT.model}"
            artifact = "{ARTIFACT.name}"
            backends = ["{urls[0]}"]
        """))
        async with served_router(cfg) as served:
            body = {"model": ARTIFACT.model, "max_tokens": 4,
                    "messages": [{"role": "user", "content": "hi"}]}
            url = f"http://127.0.0.1:{served.port}/v1/chat/completions"
            async with aiohttp.ClientSession() as session:

                async def one(i: int) -> int:
                    async with session.post(url, json=body,
                                            headers={"x-request-id": f"req-{i}"}) as r:
                        await r.read()
                        return r.status

                statuses = await asyncio.gather(*(one(i) for i in range(n)))
            assert statuses == [200] * n
            served.proc.terminate()
            assert await asyncio.wait_for(stop(served.proc), 20) == 0
    # Read once the block has read the router's stderr to its end.
    ids = sorted(line["request_id"] for line in served.access())
    assert ids == sorted(f"req-{i}" for i in range(n))
    # Logged as the loop ends, so written only if the listener is stopped before the exit.
    assert served.log[-1].startswith("drained http://127.0.0.1:"), served.log[-3:]


@pytest.mark.parametrize(("lines", "limit", "expected"), [
    (["a\n", "b\n", "c\n"], 4, ["a\nb\n", "c\n"]),
    (["a\n", "bbbbbb\n", "c\n"], 4, ["a\n", "bbbbbb\n", "c\n"]),
    (["é\n", "é\n"], 5, ["é\n", "é\n"]),  # counted in bytes: each line is 3 bytes
    ([], 4, []),
], ids=["packed", "a-long-line-alone", "utf8-bytes", "nothing"])
def test_writes_never_exceed_pipe_buf_unless_one_line_does(
        lines: list[str], limit: int, expected: list[str]) -> None:
    """Workers share one stderr pipe: a write above PIPE_BUF could interleave with another
    worker's, so the batch is cut at line ends into writes of at most the limit."""
    assert log_queue._atomic_pieces(lines, limit) == expected


def test_a_large_batch_reaches_the_stream_as_pipe_buf_writes() -> None:
    import select

    class Writes(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def write(self, s: str) -> int:
            self.sizes.append(len(s.encode()))
            return super().write(s)

    stream = Writes()
    writer = log_queue._Writer(stream)
    for i in range(400):
        writer.emit(logging.LogRecord("t", logging.INFO, __file__, 1, f"line {i:04d} " + "x" * 40,
                                      None, None))
    writer.flush()
    assert len(stream.sizes) > 1
    assert max(stream.sizes) <= select.PIPE_BUF
    assert stream.getvalue().count("\n") == 400
