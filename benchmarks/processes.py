"""The benchmarks' processes: start one, wait until it is ready, read its CPU, stop it.

Every benchmark that runs a server, a router or a load generator in its own process does it
through :func:`start` (one implementation of "ready", "stop" and "CPU seconds"), so a process
that fails to come up fails the same way everywhere: a :class:`StartError` with what it printed
and, when its stderr goes to a file, the end of that file.

Ready means one of:

* ``ready_lines=n``: the process printed ``n`` lines on stdout (each benchmark's servers print
  their address first, e.g. ``lpu-router serving on http://127.0.0.1:PORT``; :func:`url_in`
  takes the address out of such a line);
* ``ready_url=URL``: ``GET URL`` answered 200 (for programs that print nothing, as nginx).

After ready, a thread keeps reading stdout (so a chatty child never blocks on a full pipe); what
it read is returned by :meth:`Service.stop`. Each process leads a session of its own; stopping
is SIGTERM to its process group, then SIGKILL after ``timeout_s``. Async callers run
:func:`start` and :meth:`Service.stop` in a thread (``asyncio.to_thread``): both block only for
the child's start-up or shut-down.

CPU is read from Linux ``/proc``: utime + stime of a process (:func:`cpu_seconds`) or of a
process and all its descendants (:func:`tree_cpu_seconds`, for nginx's master and worker).
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["Service", "StartError", "cpu_seconds", "free_port", "rss_kib", "running", "start",
           "tree_cpu_seconds", "url_in"]

_TICK = os.sysconf("SC_CLK_TCK")
_URL = re.compile(r"https?://[^\s/]+")


class StartError(RuntimeError):
    """A process exited or stayed silent before it was ready."""


class Service:
    """A started process (see :func:`start`); ``lines`` holds what it printed until ready."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], lines: list[str]) -> None:
        self.name = name
        self.proc = proc
        self.lines = lines
        self._rest: list[str] = []
        self._reader: threading.Thread | None = None
        if proc.stdout is not None:
            self._reader = threading.Thread(target=self._drain, args=(proc.stdout,),
                                            name=f"{name}-stdout", daemon=True)
            self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self, stdout: IO[bytes]) -> None:
        for raw in stdout:
            self._rest.append(raw.decode(errors="replace").rstrip("\n"))

    def cpu_seconds(self, *, tree: bool = False) -> float:
        """User + system CPU seconds of the process so far (with its descendants if ``tree``)."""
        return tree_cpu_seconds(self.pid) if tree else cpu_seconds(self.pid)

    def stop(self, timeout_s: float = 15.0) -> list[str]:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; return the stdout lines printed
        after ready. Idempotent."""
        _stop(self.proc, timeout_s)
        if self._reader is not None:
            self._reader.join(timeout_s)
            if not self._reader.is_alive() and self.proc.stdout is not None:
                self.proc.stdout.close()
        return list(self._rest)


def _stop(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop ``proc`` and whatever it started: each process is started in a session of its own,
    so its process group holds its descendants (nginx's worker, a server's helpers); once the
    leader is gone, stragglers in the group are killed too."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def start(cmd: Sequence[str], *, name: str | None = None, ready_lines: int = 0,
          ready_url: str | None = None, timeout_s: float = 30.0,
          stderr: Path | int | None = subprocess.DEVNULL,
          env: Mapping[str, str] | None = None) -> Service:
    """Start ``cmd`` and return once it is ready (module docstring); raise StartError (the
    process stopped) when it exits or is not ready within ``timeout_s``.

    ``stderr``: a file path (appended to), a ``subprocess`` constant, or None (inherited).
    """
    label = name or Path(cmd[0]).name
    err: int | IO[bytes] | None
    err = stderr.open("ab") if isinstance(stderr, Path) else stderr
    try:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=err,
                                env=None if env is None else dict(env),
                                start_new_session=True)
    finally:
        if isinstance(stderr, Path) and err is not None and not isinstance(err, int):
            err.close()  # the child holds its own descriptor
    deadline = time.monotonic() + timeout_s
    try:
        lines = _read_lines(proc, ready_lines, deadline, label)
    except BaseException as exc:
        _stop(proc, 0.0)
        if proc.stdout is not None:
            proc.stdout.close()
        raise _with_stderr(exc, stderr) from None
    service = Service(label, proc, lines)
    if ready_url is not None:
        try:
            _wait_url(proc, ready_url, deadline, label)
        except BaseException as exc:
            service.stop(timeout_s=1.0)
            raise _with_stderr(exc, stderr) from None
    return service


def _with_stderr(exc: BaseException, stderr: Path | int | None) -> BaseException:
    """A StartError with the end of the child's stderr file, when there is one."""
    if isinstance(exc, StartError) and isinstance(stderr, Path):
        return StartError(f"{exc}; the end of its stderr ({stderr}):\n{_tail(stderr)}")
    return exc


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def running(cmd: Sequence[str], *, name: str | None = None, ready_lines: int = 0,
            ready_url: str | None = None, timeout_s: float = 30.0,
            stderr: Path | int | None = subprocess.DEVNULL,
            env: Mapping[str, str] | None = None) -> Iterator[Service]:
    """:func:`start` as a context manager: the process is stopped when the block ends."""
    service = start(cmd, name=name, ready_lines=ready_lines, ready_url=ready_url,
                    timeout_s=timeout_s, stderr=stderr, env=env)
    try:
        yield service
    finally:
        service.stop()


def _read_lines(proc: subprocess.Popen[bytes], n: int, deadline: float,
                label: str) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    buf = b""
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while len(lines) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise StartError(f"{label}: not ready within the time allowed"
                                 f" (printed {lines!r})")
            # os.read, not the buffered file: the reader thread goes on from the same file
            # object, so nothing may sit in its buffer. One byte at a time is enough for the
            # few start-up lines.
            chunk = os.read(fd, 1)
            if not chunk:
                raise StartError(f"{label}: exited with {proc.wait()} before it was ready"
                                 f" (printed {lines!r})")
            buf += chunk
            if chunk == b"\n":
                lines.append(buf.decode(errors="replace").rstrip("\n"))
                buf = b""
    return lines


def _wait_url(proc: subprocess.Popen[bytes], url: str, deadline: float, label: str) -> None:
    while True:
        if proc.poll() is not None:
            raise StartError(f"{label}: exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise StartError(f"{label}: {url} did not answer 200 in the time allowed")
        time.sleep(0.05)


def url_in(line: str) -> str:
    """The first ``http://host:port`` in ``line`` (without any path); ValueError if none."""
    found = _URL.search(line)
    if found is None:
        raise ValueError(f"no URL in {line!r}")
    return found.group(0)


def free_port() -> int:
    """A loopback TCP port free right now (for programs that cannot be told to pick one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (Linux ``/proc``); 0.0 once it is gone."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of ``pid`` plus that of every live descendant."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        member = todo.pop()
        total += cpu_seconds(member)
        todo += parents.get(member, [])
    return total


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (``VmRSS``); 0 when unknown."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
