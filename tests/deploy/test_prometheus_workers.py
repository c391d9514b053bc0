"""A real Prometheus scrapes a router of two worker processes under load: the pod is one target.

The router runs as production runs it, ``python -m router serve CONFIG --workers 2`` (a
supervisor and two workers on one port, ``SO_REUSEPORT``), in front of two emulated backends
served in this test's loop; the workers' multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``
in their environment, read from ``/proc``) lets each worker's own counts be read apart.
A Prometheus server scrapes the port every second, as a ServiceMonitor scrapes a pod. The load
opens a new connection per request, so the kernel spreads it over both workers; bucket ``tiny``
is offered more than its one slot takes in time and refuses some, ``roomy`` admits everything.

Under load, every query of every Grafana panel and every recording rule returns a finite sample,
every rule evaluates without error, the prometheus-adapter rule behind the HPA gives the pod one
busy share in (0, 1], and the pod's series say two workers. At rest (load stopped, nothing in
flight) the pod's counters, as Prometheus last scraped them, add up: admitted + refused =
requests sent = completion requests received, admitted = finished = completed = answers 200;
each worker admitted some of them and the two workers' own counts sum to the pod's.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from deploy_support import (
    DEPLOY,
    RULE_FILES,
    load_dashboard,
    panel_targets,
    recording_rule_names,
    substitute,
)
from live_processes import pod_workers, served_router, stop
from live_prometheus import (
    await_data,
    prometheus,
    query,
    scalar,
    streaming_client,
    wait_ready,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from lpu_emulator.options import EmulatorOptions
from lpu_emulator.server import start_emulators
from lpu_protocol.artifact import builtin_artifact

TINY_MODEL = "llama-3.1-8b-instant"
ROOMY_MODEL = "llama-3.3-70b-versatile"
WORKERS = 2
DEADLINE_S = 60.0
"""Longest wait for every query to return data, and for Prometheus to see the pod at rest."""
COMPLETIONS = "/v1/chat/completions"


def _toml(values: dict[str, Any]) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def _router_toml(tiny_url: str, roomy_url: str) -> str:
    """The live test's two buckets; workers come from ``--workers``, not from the file."""
    return (
        "[server]\n" + _toml({"host": "127.0.0.1", "port": 0})
        + "[health]\n" + _toml({"interval_s": 0.5})
        + "[admission]\n" + _toml({"mode": "timeline"})
        # One slot, ~0.11 s per 20-token request, a 0.25 s SLO: four clients are too many.
        + "[[buckets]]\n" + _toml({"name": "tiny", "model": TINY_MODEL,
                                   "artifact": "llama-3.1-8b-2k", "slots": 1,
                                   "backends": [tiny_url], "ttft_slo_s": 0.25, "max_queue": 2})
        + "[[buckets]]\n" + _toml({"name": "roomy", "model": ROOMY_MODEL,
                                   "artifact": "llama-3.3-70b-2k", "backends": [roomy_url],
                                   "ttft_slo_s": 2.0})
    )


def _adapter_query(job: str) -> str:
    """The prometheus-adapter rule's query as the adapter sends it for this one "pod"."""
    config_map = yaml.safe_load(
        (DEPLOY / "k8s" / "base" / "prometheus-adapter-rules.yaml").read_text("utf-8"))
    (rule,) = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    text: str = rule["metricsQuery"]
    return text.replace("<<.GroupBy>>", "instance").replace("<<.LabelMatchers>>", f'job="{job}"')


def _multiprocess_dir(pid: int) -> Path:
    """The ``PROMETHEUS_MULTIPROC_DIR`` worker ``pid`` was started with."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (value,) = [v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(value.split(b"=", 1)[1].decode())


def _worker_counts(multiproc: Path, pid: int, tmp: Path) -> dict[str, float]:
    """One worker's own counters, from its files of the pod's multiprocess directory."""
    mine = tmp / f"worker-{pid}"
    mine.mkdir()
    for path in multiproc.glob(f"*_{pid}.db"):
        shutil.copy(path, mine / path.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(mine))  # type: ignore[no-untyped-call]
    counts: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            counts[sample.name] = counts.get(sample.name, 0.0) + sample.value
    assert generate_latest(registry)  # a well-formed exposition of that worker alone
    return counts


async def _until(what: str, check: Any, deadline: float) -> None:
    """Await ``check()`` until it returns True; fail with ``what`` at ``deadline``."""
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.5)


@pytest.mark.timeout(150)
async def test_a_two_worker_pod_scraped_by_prometheus(tmp_path: Path) -> None:
    tiny = replace(builtin_artifact("llama-3.1-8b-2k"), slots=1)
    roomy = builtin_artifact("llama-3.3-70b-2k")
    queries = {f"panel {where}": substitute(expr) for where, expr in
               panel_targets(load_dashboard())}
    queries |= {f"rule {name}": name for name in sorted(recording_rule_names())}

    async with (
        start_emulators(EmulatorOptions(tiny)) as (tiny_url,),
        start_emulators(EmulatorOptions(roomy)) as (roomy_url,),
    ):
        config = tmp_path / "router.toml"
        config.write_text(_router_toml(tiny_url, roomy_url), "utf-8")
        async with served_router(config, "--workers", str(WORKERS)) as served:
            router_url = f"http://127.0.0.1:{served.port}"
            pids = await pod_workers(served.port, WORKERS)
            multiproc = _multiprocess_dir(next(iter(pids.values())))
            prom_config = {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                           "evaluation_interval": "1s"},
                "rule_files": [str(p) for p in RULE_FILES],
                "scrape_configs": [
                    {"job_name": "lpu-router",
                     "static_configs": [{"targets": [f"127.0.0.1:{served.port}"]}]},
                    {"job_name": "lpu-emulator", "static_configs": [
                        {"targets": [tiny_url.split("//")[1]], "labels": {"bucket": "tiny"}},
                        {"targets": [roomy_url.split("//")[1]], "labels": {"bucket": "roomy"}},
                    ]},
                ],
            }
            async with (
                prometheus(tmp_path, prom_config) as prom,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                # A new connection per request: the kernel picks a worker for each.
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                      connector=aiohttp.TCPConnector(force_close=True)) as load,
            ):
                stop_load = asyncio.Event()
                statuses: list[int] = []
                clients = [asyncio.create_task(streaming_client(
                    load, router_url, TINY_MODEL, 0.02, stop_load, statuses)) for _ in range(4)]
                clients.append(asyncio.create_task(streaming_client(
                    load, router_url, ROOMY_MODEL, 0.2, stop_load, statuses)))
                try:
                    await wait_ready(session, prom)
                    await await_data(session, prom, queries, clients, DEADLINE_S)
                    assert 200 in statuses and 429 in statuses, sorted(set(statuses))

                    # The HPA's metric, as prometheus-adapter computes it for the pod.
                    (busy,) = await query(session, prom, _adapter_query("lpu-router"))
                    assert 0 < float(busy["value"][1]) <= 1.0, busy
                    assert await scalar(session, prom, "sum(lpu_router_event_loops)") == WORKERS
                    assert await scalar(session, prom, "max(lpu_router_workers)") == WORKERS
                    assert await scalar(
                        session, prom, "count(lpu_router_worker_info)") == WORKERS
                    assert await scalar(
                        session, prom, "sum(lpu_router_worker_restarts_total)") == 0

                    async with session.get(f"{prom}/api/v1/rules") as resp:
                        groups = (await resp.json())["data"]["groups"]
                    for group in groups:
                        for rule in group["rules"]:
                            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))

                finally:
                    stop_load.set()
                    await asyncio.gather(*clients, return_exceptions=True)

                sent = len(statuses)
                ok = statuses.count(200)
                assert set(statuses) <= {200, 429}, sorted(set(statuses))

                async def at_rest() -> bool:
                    seen = await scalar(session, prom, "sum(lpu_router_requests_received_total"
                                        f'{{route="{COMPLETIONS}"}})')
                    flying = await scalar(session, prom, "sum(lpu_router_in_flight)")
                    finished = await scalar(session, prom,
                                            "sum(lpu_router_requests_finished_total)")
                    return seen == sent and flying == 0 and finished == ok

                await _until("Prometheus never saw the pod at rest", at_rest,
                             time.monotonic() + DEADLINE_S)
                pod = {
                    "admitted": await scalar(session, prom,
                                             "sum(lpu_router_requests_admitted_total)"),
                    "refused": await scalar(session, prom,
                                            "sum(lpu_router_requests_rejected_total)"),
                    "finished": await scalar(session, prom,
                                             "sum(lpu_router_requests_finished_total)"),
                    "completed": await scalar(session, prom, "sum(lpu_router_requests_finished"
                                              '_total{outcome="completed"})'),
                }
                assert pod == {"admitted": ok, "refused": sent - ok, "finished": ok,
                               "completed": ok}, (pod, sent)
                # Whichever worker answers a scrape answers for the pod.
                for _ in range(6):
                    async with load.get(f"{router_url}/metrics") as resp:
                        text = await resp.text()
                    admitted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                   if line.startswith("lpu_router_requests_admitted_total{"))
                    assert admitted == ok

            # Each worker's own share (its files alone) and the pod's sum of them.
            per_worker = [_worker_counts(multiproc, pid, tmp_path).get(
                "lpu_router_requests_admitted_total", 0.0) for pid in pids.values()]
            assert all(n > 0 for n in per_worker), f"a worker admitted nothing: {per_worker}"
            assert sum(per_worker) == ok, (per_worker, ok)
            assert await stop(served.proc) == 0  # SIGTERM: the pod drains and exits cleanly
