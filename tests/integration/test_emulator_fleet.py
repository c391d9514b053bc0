"""``lpu-emulator --processes P``: replicas in child processes, supervised by the parent.

Real processes and real loopback sockets: every replica answers on its own consecutive port,
the children die with the parent, a child that dies takes the fleet down with exit 1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

from lpu_emulator.fleet_process import FleetProcess, running_fleet, start_fleet

ARTIFACT = "llama-3.1-8b-2k"
FAST = ["--time-scale", "0.05"]


def _consecutive_free_ports(n: int) -> int:
    """A base port such that base .. base + n - 1 are free now (racy but rarely wrong)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        socks = []
        try:
            for i in range(n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise AssertionError("no run of free ports")


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as r:
        doc: dict[str, object] = json.loads(r.read())
        return doc


def _chat(url: str) -> dict[str, object]:
    body = json.dumps({"model": ARTIFACT, "max_tokens": 5,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc: dict[str, object] = json.loads(r.read())
        return doc


def _gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether ``pid`` is gone (or a zombie awaiting its reaper) within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _children(fleet: FleetProcess) -> list[int]:
    return fleet.pids()[1:]


def test_replicas_on_consecutive_ports_from_several_processes() -> None:
    base = _consecutive_free_ports(3)
    with running_fleet(ARTIFACT, replicas=3, processes=2, args=FAST, port=base) as fleet:
        assert fleet.urls == [f"http://127.0.0.1:{base + i}" for i in range(3)]
        assert len(_children(fleet)) == 2
        for url in fleet.urls:
            assert _get(url + "/healthz") == {"status": "ok"}
            answer = _chat(url)
            usage = answer["usage"]
            assert isinstance(usage, dict) and usage["completion_tokens"] == 5
        children = _children(fleet)
        os.kill(fleet.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the parent stops them
        assert fleet.proc.wait(30) == 0
    assert all(_gone(pid) for pid in children)


def test_one_process_has_no_children() -> None:
    with running_fleet(ARTIFACT, replicas=2, processes=1, args=FAST) as fleet:
        assert len(fleet.urls) == 2
        assert fleet.pids() == [fleet.pid]
        assert _get(fleet.urls[1] + "/healthz") == {"status": "ok"}


def test_a_child_that_dies_stops_the_fleet_with_exit_1() -> None:
    fleet = start_fleet(ARTIFACT, replicas=2, processes=2, args=FAST)
    try:
        victim, other = _children(fleet)
        os.kill(victim, signal.SIGKILL)
        assert fleet.proc.wait(30) == 1
        assert _gone(other)
        err = fleet.stderr.read_text()
        assert f"replica process pid {victim} (replicas 0..0) exited with -9" in err
        assert "stopping the fleet" in err
    finally:
        fleet.stop()


def test_children_do_not_outlive_a_killed_parent() -> None:
    fleet = start_fleet(ARTIFACT, replicas=2, processes=2, args=FAST)
    try:
        children = _children(fleet)
        assert len(children) == 2
        os.kill(fleet.pid, signal.SIGKILL)
        fleet.proc.wait(10)
        assert all(_gone(pid) for pid in children)
    finally:
        fleet.stop()

