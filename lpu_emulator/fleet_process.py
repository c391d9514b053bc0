"""Starting an emulator fleet from Python: ``lpu-emulator`` in a subprocess, its URLs back.

For benchmarks, soaks and tests that need emulated replicas in processes of their own::

    from lpu_emulator.fleet_process import running_fleet

    with running_fleet("llama-3.1-8b-2k", replicas=4, processes=2,
                       args=["--time-scale", "0.1"]) as fleet:
        fleet.urls          # ["http://127.0.0.1:PORT", ...], replica order, no /v1
        fleet.pids()        # the supervisor and every child serving replicas
        fleet.cpu_seconds() # user + system CPU of all of them so far

``processes=None`` takes the command's default (one per core, at most ``replicas``); 1 serves
every replica from the one process started. ``start_fleet`` returns once every replica
answered with its URL line, or raises :class:`FleetStartError` with the end of what the
command wrote on stderr. :meth:`FleetProcess.stop` is SIGTERM to the supervisor (it stops
its children), SIGKILL after ``timeout_s``; the children die with it in any case. Start and
stop block (for async callers: ``asyncio.to_thread``). :meth:`FleetProcess.poll` tells
whether the fleet is still up: the supervisor exits 1 as soon as any child dies.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["FleetProcess", "FleetStartError", "running_fleet", "start_fleet"]

_TICK = os.sysconf("SC_CLK_TCK")


class FleetStartError(RuntimeError):
    """The fleet exited, or did not print every URL in the time allowed."""


class FleetProcess:
    """A running ``lpu-emulator`` (one process, or a supervisor and its children)."""

    def __init__(self, proc: subprocess.Popen[bytes], urls: list[str], stderr: Path) -> None:
        self.proc = proc
        self.urls = urls
        self.stderr = stderr
        """The file the command's stderr goes to (the supervisor's and its children's)."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        """None while the fleet runs; its exit code once it ended."""
        return self.proc.poll()

    def pids(self) -> list[int]:
        """The command's process and its children (the replica processes), live now."""
        out = [self.proc.pid]
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                out += [int(p) for p in (task / "children").read_text().split()]
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU seconds so far of every process in :meth:`pids`."""
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / _TICK
        return total

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, SIGKILL after ``timeout_s``; the exit code. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def _read_urls(proc: subprocess.Popen[bytes], n: int, deadline: float) -> list[str] | str:
    """The ``n`` URL lines, or why they did not come."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    urls: list[str] = []
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while len(urls) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return f"not ready in the time allowed (printed {urls!r})"
            chunk = os.read(fd, 4096)
            if not chunk:
                return f"exited with {proc.wait()} before it was ready (printed {urls!r})"
            buf += chunk
            *lines, buf = buf.split(b"\n")
            # Each line: "lpu-emulator: NAME (VERSION) at http://HOST:PORT/v1".
            urls += [ln.decode().rsplit(" at ", 1)[1].removesuffix("/v1") for ln in lines]
    return urls


def start_fleet(
    artifact: str, replicas: int = 1, processes: int | None = None, *,
    args: Sequence[str] = (), host: str = "127.0.0.1", port: int = 0,
    timeout_s: float = 60.0, stderr: Path | None = None,
) -> FleetProcess:
    """Start ``lpu-emulator --artifact ARTIFACT --replicas N [--processes P] ARGS`` and wait
    for its URLs. ``args``: any other flags of the command. ``stderr``: a file to append the
    command's stderr to (default: a temporary file, kept, named by :attr:`FleetProcess.stderr`).
    """
    cmd = [sys.executable, "-m", "lpu_emulator", "--artifact", artifact, "--host", host,
           "--port", str(port), "--replicas", str(replicas), *args]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    if stderr is None:
        fd, name = tempfile.mkstemp(prefix="lpu-emulator-fleet-", suffix=".log")
        os.close(fd)
        stderr = Path(name)
    with stderr.open("ab") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, start_new_session=True)
    fleet = FleetProcess(proc, [], stderr)
    got = _read_urls(proc, replicas, time.monotonic() + timeout_s)
    if isinstance(got, str):
        fleet.stop(timeout_s=5.0)
        tail = "\n".join(stderr.read_text(errors="replace").splitlines()[-20:])
        raise FleetStartError(f"lpu-emulator {got}; its stderr ({stderr}) ends:\n{tail}")
    fleet.urls = got
    return fleet


@contextlib.contextmanager
def running_fleet(
    artifact: str, replicas: int = 1, processes: int | None = None, *,
    args: Sequence[str] = (), host: str = "127.0.0.1", port: int = 0,
    timeout_s: float = 60.0, stderr: Path | None = None,
) -> Iterator[FleetProcess]:
    """:func:`start_fleet` as a context manager: the fleet is stopped when the block ends."""
    fleet = start_fleet(artifact, replicas, processes, args=args, host=host, port=port,
                        timeout_s=timeout_s, stderr=stderr)
    try:
        yield fleet
    finally:
        fleet.stop()
