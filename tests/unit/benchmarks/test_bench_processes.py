"""benchmarks.processes: ready on a line or a URL, stop with SIGTERM then SIGKILL, CPU from /proc.

Real child processes (small Python programs); no figure is asserted beyond "it moved"."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.processes import (
    StartError,
    cpu_seconds,
    free_port,
    rss_kib,
    running,
    start,
    tree_cpu_seconds,
    url_in,
)

pytestmark = pytest.mark.timeout(60)


def py(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", textwrap.dedent(code)]


def test_ready_after_the_lines_asked_for_then_the_rest_comes_with_stop() -> None:
    service = start(py("""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("bye"), sys.exit(0)))
        # One write: "after ready" is in the pipe before the first line can be read.
        sys.stdout.write("serving on http://127.0.0.1:1234/v1\\nsecond\\nafter ready\\n")
        while True:
            time.sleep(0.1)
        """), ready_lines=2)
    assert service.lines == ["serving on http://127.0.0.1:1234/v1", "second"]
    assert url_in(service.lines[0]) == "http://127.0.0.1:1234"
    assert service.stop() == ["after ready", "bye"]
    assert service.proc.returncode == 0
    assert service.stop() == ["after ready", "bye"]  # idempotent


def test_a_process_that_ignores_sigterm_is_killed() -> None:
    service = start(py("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready")
        while True:
            time.sleep(0.1)
        """), ready_lines=1)
    service.stop(timeout_s=0.5)
    assert service.proc.returncode == -9


def test_exit_before_ready_is_a_start_error_with_the_end_of_stderr(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    with pytest.raises(StartError, match=r"(?s)exited with 3 before it was ready.*no config"):
        start(py("import sys; print('no config', file=sys.stderr); sys.exit(3)"),
              name="child", ready_lines=1, stderr=log)


def test_silence_is_a_start_error_and_the_process_is_gone() -> None:
    with pytest.raises(StartError, match="not ready within"):
        start(py("import time; time.sleep(30)"), ready_lines=1, timeout_s=0.3)


def test_ready_when_the_url_answers_200() -> None:
    port = free_port()
    code = f"""
        import http.server, time
        time.sleep(0.3)  # not listening at once: start must poll
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/readyz" else 404)
                self.end_headers()
            def log_message(self, *a):
                pass
        http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
        """
    with running(py(code), ready_url=f"http://127.0.0.1:{port}/readyz") as service:
        assert service.proc.poll() is None
    assert service.proc.returncode is not None


def test_cpu_seconds_of_a_process_and_of_its_tree() -> None:
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    parent = f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {spin + "time.sleep(60)"!r}])
        time.sleep(1.0)  # the child's spin is done
        print("ready")
        time.sleep(60)
        """
    with running(py(parent), ready_lines=1) as service:
        own, tree = cpu_seconds(service.pid), tree_cpu_seconds(service.pid)
        assert tree >= own + 0.25
        assert rss_kib(service.pid) > 0
    assert cpu_seconds(service.pid) == 0.0  # gone
    assert cpu_seconds(os.getpid()) > 0
