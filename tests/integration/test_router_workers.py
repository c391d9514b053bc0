"""``lpu-router serve CONFIG --workers 2`` as real processes in front of a real emulator
process: both workers serve the one port, the pod's ``/metrics`` counts every request once,
a killed worker is started again (and counted), SIGTERM drains a stream in flight to its end
and every process exits, SIGHUP reloads both workers while requests run and loses none."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from live_processes import (
    Served,
    StartEmulatorProcess,
    StartRouterProcess,
    config_toml,
    per_worker,
    pod_workers,
)
from prometheus_client.parser import text_string_to_metric_families
from stack import chat, invariant_problems, post_counted

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT, POSIX signals"),
              pytest.mark.timeout(120)]


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name]


def _total(text: str, name: str, **labels: str) -> float:
    return sum(v for got, v in _samples(text, name)
               if all(got.get(k) == want for k, want in labels.items()))


async def _settled_metrics(port: int, within_s: float = 10.0) -> str:
    """The pod's ``/metrics`` once the books settle (the sampled gauges lag by up to 0.5 s)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within_s
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            problems = invariant_problems(text)
            if not problems:
                return text
            assert loop.time() < until, problems
            await asyncio.sleep(0.1)


def _gone(pid: int) -> bool:
    """``pid`` has exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def _terminate(router: Served) -> None:
    """SIGTERM to the supervisor: it exits 0 once its workers have (and removes its metric
    directory, which the fixture's SIGKILL would leave behind)."""
    router.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(router.proc.wait(), 40) == 0


async def _each_on_a_fresh_connection(port: int, n: int, body: dict[str, Any],
                                      at_once: int = 8) -> Counter[int]:
    """``n`` requests, each on its own connection, ``at_once`` at a time: their statuses."""
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(at_once)

    async def one() -> None:
        async with gate, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as s, \
                s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
            await r.read()
            statuses[r.status] += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return statuses


async def test_two_workers_serve_one_port_and_the_pod_counts_each_request_once(
        tmp_path: Path, emulator_process: StartEmulatorProcess,
        router_process: StartRouterProcess) -> None:
    urls = await emulator_process(time_scale=0.05)
    cfg = tmp_path / "router.toml"
    cfg.write_text(config_toml(urls, admission="timeline", bucket={"time_scale": 0.05}))
    router = await router_process(cfg, "--workers", "2")
    pids = await pod_workers(router.port, 2)
    assert len(set(pids.values())) == 2 and router.proc.pid not in pids.values()

    assert await _each_on_a_fresh_connection(router.port, 60, chat(8)) == {200: 60}

    # /admin/buckets is each worker's own view: its own admissions, which add up to all.
    own = await per_worker(router.port, "/admin/buckets", 2)
    admitted = {i: body["buckets"]["short"]["counts"]["admitted"] for i, body in own.items()}
    assert all(n > 0 for n in admitted.values()) and sum(admitted.values()) == 60, admitted
    # /metrics is the pod's: every request once, whichever worker served it.
    text = await _settled_metrics(router.port)
    assert _total(text, "lpu_router_requests_admitted_total") == 60
    assert _total(text, "lpu_router_requests_finished_total", outcome="completed") == 60
    assert {labels["pid"] for labels, _ in _samples(text, "lpu_router_worker_info")} \
        == {str(p) for p in pids.values()}
    assert _total(text, "lpu_router_workers") == 2
    assert _total(text, "lpu_router_worker_restarts_total") == 0
    assert _total(text, "lpu_router_backend_up") == 1  # min over the workers: up on both
    await _terminate(router)


async def test_a_killed_worker_is_started_again_and_counted_while_the_other_serves(
        tmp_path: Path, emulator_process: StartEmulatorProcess,
        router_process: StartRouterProcess) -> None:
    urls = await emulator_process(time_scale=0.05)
    cfg = tmp_path / "router.toml"
    cfg.write_text(config_toml(urls, bucket={"time_scale": 0.05}))
    router = await router_process(cfg, "--workers", "2")
    before = await pod_workers(router.port, 2)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    # Connections the kernel queued on its socket as it died are reset (docs/router.md); the
    # supervisor logs the exit once it has reaped the process, its socket closed by then.
    exited = f"worker 0 (pid {victim}) exited unasked: killed by SIGKILL"
    for _ in range(200):  # bounded
        if router.lines(exited):
            break
        await asyncio.sleep(0.02)
    assert router.lines(exited) and _gone(victim)
    assert await _each_on_a_fresh_connection(router.port, 20, chat(8)) == {200: 20}

    for _ in range(200):  # bounded: started again after the first backoff
        if any(line.startswith("worker 0 (pid") and line.endswith("serving again")
               for line in router.log):
            break
        await asyncio.sleep(0.05)
    after = await pod_workers(router.port, 2)
    assert after[0] != victim and after[1] == before[1], (before, after)
    assert await _each_on_a_fresh_connection(router.port, 20, chat(8)) == {200: 20}

    text = await _settled_metrics(router.port)
    assert _total(text, "lpu_router_worker_restarts_total", worker="0") == 1
    assert _total(text, "lpu_router_worker_restarts_total", worker="1") == 0
    # The dead worker's live gauges are gone from the pod's series; its counters stay.
    assert {labels["pid"] for labels, _ in _samples(text, "lpu_router_worker_info")} \
        == {str(after[0]), str(after[1])}
    assert _total(text, "lpu_router_requests_finished_total", outcome="completed") == 40
    await _terminate(router)


async def test_sigterm_drains_a_stream_in_flight_to_its_end_and_every_process_exits(
        tmp_path: Path, emulator_process: StartEmulatorProcess,
        router_process: StartRouterProcess) -> None:
    # A reply of 1000 tokens at full time scale: about two seconds of stream.
    urls = await emulator_process(time_scale=1.0)
    cfg = tmp_path / "router.toml"
    cfg.write_text(config_toml(urls, server={"drain_s": 20.0}, bucket={"time_scale": 1.0}))
    router = await router_process(cfg, "--workers", "2")
    pids = await pod_workers(router.port, 2)
    async with aiohttp.ClientSession() as s, \
            s.post(f"http://127.0.0.1:{router.port}/v1/chat/completions",
                   json=chat(1000, stream=True)) as r:
        assert r.status == 200
        first = await r.content.readany()
        assert first.startswith(b"data: ")
        router.proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(r.read(), 30)
    stream = first + rest
    assert stream.endswith(b"data: [DONE]\n\n") and b"shutting_down" not in stream, stream[-300:]
    assert await asyncio.wait_for(router.proc.wait(), 40) == 0
    assert all(_gone(pid) for pid in pids.values())
    drained = router.lines("drained http://")
    assert len(drained) == 2 and all("0 ended at the deadline, 0 cancelled" in d
                                     for d in drained), drained
    assert sum("1 in progress at start" in d for d in drained) == 1, drained
    for i, pid in pids.items():
        assert router.lines(f"worker {i} (pid {pid}) exited: exit status 0"), router.log[-20:]


async def test_sighup_reloads_both_workers_while_requests_run_and_loses_none(
        tmp_path: Path, emulator_process: StartEmulatorProcess,
        router_process: StartRouterProcess) -> None:
    urls = await emulator_process(time_scale=1.0)
    cfg = tmp_path / "router.toml"

    def write(ttft_slo_s: float, workers: int) -> None:
        cfg.write_text(config_toml(urls, server={"drain_s": 5.0, "workers": workers},
                                   bucket={"time_scale": 1.0, "ttft_slo_s": ttft_slo_s},
                                   admission="timeline"))

    write(2.0, 2)  # the file's workers = 2: no --workers flag
    router = await router_process(cfg)
    pids = await pod_workers(router.port, 2)
    base = f"http://127.0.0.1:{router.port}"
    statuses: Counter[str] = Counter()

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        await post_counted(session, base, chat(60, stream=i % 3 == 0), statuses)

    # A keep-alive pool at a steady 25 requests/s (open loop): a refused reload (invalid
    # file), then a valid one that lowers the SLO and asks for 3 workers (a restart's job).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:
        tasks: list[asyncio.Task[None]] = []
        for i in range(100):
            tasks.append(asyncio.create_task(one(session, i)))
            if i == 20:
                cfg.write_text("[server\n")
                router.proc.send_signal(signal.SIGHUP)
            if i == 45:
                write(1.5, 3)
                router.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.04)
        await asyncio.gather(*tasks)
    assert statuses == {"200": 100}, statuses
    assert len(router.lines("reload refused, the workers keep the previous config")) == 1
    assert len(router.lines("reload: server.workers 2 -> 3 needs a restart")) == 1
    assert len(router.lines("reloaded http://")) == 2, router.log[-30:]

    views = await per_worker(router.port, "/admin/buckets", 2)
    assert {i: v["worker"]["pid"] for i, v in views.items()} == pids  # reloaded, not restarted
    assert all(v["buckets"]["short"]["ttft_slo_s"] == 1.5 for v in views.values())
    # The counters run on across the reload (one catalog per worker): every request once.
    text = await _settled_metrics(router.port)
    assert _total(text, "lpu_router_requests_admitted_total") == 100
    assert _total(text, "lpu_router_requests_finished_total", outcome="completed") == 100
    assert _total(text, "lpu_router_admission_limit", limit="ttft_slo_seconds") == 1.5
    await _terminate(router)


async def test_demo_runs_its_router_as_workers() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "--log-level", "WARNING", "demo", "--port", "0",
        "--workers", "2", "--replicas", "1", "--time-scale", "0.05",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("lpu-router demo: router at http://127.0.0.1:"), line
        port = int(line.split(",", 1)[0].rsplit(":", 1)[1])
        pids = await pod_workers(port, 2)
        assert proc.pid not in pids.values()
        assert await _each_on_a_fresh_connection(port, 10, chat(8)) == {200: 10}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 40) == 0
        assert all(_gone(pid) for pid in pids.values())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_given_metric_directory_is_emptied_at_start_and_kept(
        tmp_path: Path, emulator_process: StartEmulatorProcess,
        router_process: StartRouterProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    urls = await emulator_process(time_scale=0.05)  # before the variable: not its directory
    shared = tmp_path / "metrics"
    shared.mkdir()
    stale = shared / "counter_999999.db"  # a previous pod's series would add up with ours
    stale.write_bytes(b"not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    cfg = tmp_path / "router.toml"
    cfg.write_text(config_toml(urls, bucket={"time_scale": 0.05}))
    router = await router_process(cfg, "--workers", "2")
    pids = await pod_workers(router.port, 2)
    assert not stale.exists()
    assert {f"counter_{pid}.db" for pid in pids.values()} <= {f.name for f in shared.iterdir()}
    assert await _each_on_a_fresh_connection(router.port, 10, chat(8)) == {200: 10}
    text = await _settled_metrics(router.port)
    assert _total(text, "lpu_router_requests_finished_total", outcome="completed") == 10
    await _terminate(router)
    assert shared.is_dir() and any(shared.iterdir())  # not the supervisor's to remove
