"""A real Prometheus scrapes a live router and emulators; every panel and rule returns data.

Two emulated backends and the router run in this test's event loop on
ephemeral loopback ports. A Prometheus server (Debian's ``prometheus``) is
started on loopback with a 1 s scrape and evaluation interval and the project's
recording and alert rules. A short load keeps running while the test asks
Prometheus, through its HTTP API, for every query of every Grafana panel (with
the template variables on "All") and every recording rule, until each returns
a finite sample or the deadline passes.

The load makes both kinds of traffic the dashboard shows: bucket ``tiny`` has
one slot and a tight TTFT SLO and is offered more than it can take, so the
timeline controller refuses some requests (``slo_ttft``); bucket ``roomy`` is
offered little and admits everything.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from deploy_support import (
    RULE_FILES,
    exposed_names,
    load_dashboard,
    metric_names,
    panel_targets,
    recording_rule_names,
    substitute,
    supervisor_names,
)
from live_prometheus import await_data, prometheus, query, streaming_client, wait_ready
from prometheus_client import CollectorRegistry

from lpu_emulator.options import EmulatorOptions
from lpu_emulator.server import start_emulators
from lpu_protocol.artifact import builtin_artifact
from router.app import build_app
from router.config import parse_config
from router.server import running

TINY_MODEL = "llama-3.1-8b-instant"
ROOMY_MODEL = "llama-3.3-70b-versatile"
DEADLINE_S = 45.0
"""Longest wait for every query to return data (typically ~10 s)."""


def _router_config(tiny_url: str, roomy_url: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "health": {"interval_s": 0.5},
        "admission": {"mode": "timeline"},
        "buckets": [
            # One slot, ~0.11 s per 20-token request, a 0.25 s SLO: four concurrent
            # clients are more than it can take in time.
            {"name": "tiny", "model": TINY_MODEL, "artifact": "llama-3.1-8b-2k", "slots": 1,
             "backends": [tiny_url], "ttft_slo_s": 0.25, "max_queue": 2},
            {"name": "roomy", "model": ROOMY_MODEL, "artifact": "llama-3.3-70b-2k",
             "backends": [roomy_url], "ttft_slo_s": 2.0},
        ],
    }


def _prometheus_config(router_url: str, tiny_url: str, roomy_url: str) -> dict[str, Any]:
    def target(url: str) -> str:
        return str(urlsplit(url).netloc)

    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {"job_name": "lpu-router", "static_configs": [{"targets": [target(router_url)]}]},
            {"job_name": "lpu-emulator", "static_configs": [
                {"targets": [target(tiny_url)], "labels": {"bucket": "tiny"}},
                {"targets": [target(roomy_url)], "labels": {"bucket": "roomy"}},
            ]},
        ],
    }


@pytest.mark.timeout(90)
async def test_every_panel_query_and_recording_rule_returns_data(tmp_path: Path) -> None:
    tiny = replace(builtin_artifact("llama-3.1-8b-2k"), slots=1)
    roomy = builtin_artifact("llama-3.3-70b-2k")
    queries = {f"panel {where}": substitute(expr) for where, expr in
               panel_targets(load_dashboard())}
    queries |= {f"rule {name}": name for name in sorted(recording_rule_names())}

    async with (
        start_emulators(EmulatorOptions(tiny)) as (tiny_url,),
        start_emulators(EmulatorOptions(roomy)) as (roomy_url,),
    ):
        config = parse_config(_router_config(tiny_url, roomy_url), "live-test")
        app = build_app(config, registry=CollectorRegistry())
        async with (
            running(app) as router_url,
            prometheus(tmp_path, _prometheus_config(router_url, tiny_url, roomy_url)) as prom,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        ):
            stop = asyncio.Event()
            statuses: list[int] = []
            clients = [asyncio.create_task(streaming_client(session, router_url, TINY_MODEL,
                                                            0.02, stop, statuses))
                       for _ in range(4)]
            clients.append(asyncio.create_task(
                streaming_client(session, router_url, ROOMY_MODEL, 0.2, stop, statuses)))
            try:
                await wait_ready(session, prom)
                await await_data(session, prom, queries, clients, DEADLINE_S)
                assert 200 in statuses and 429 in statuses, sorted(set(statuses))
                shed = await query(session, prom,
                                    'bucket:lpu_router_requests_shed:ratio_rate1m{bucket="tiny"}')
                assert float(shed[0]["value"][1]) > 0, "the overloaded bucket shed nothing"

                # Every rule evaluates without a runtime error (e.g. vector matching).
                async with session.get(f"{prom}/api/v1/rules") as resp:
                    groups = (await resp.json())["data"]["groups"]
                assert len(groups) == 2
                for group in groups:
                    for rule in group["rules"]:
                        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))

                # The names the queries read are in the live expositions.
                live: set[str] = set()
                for url in (router_url, tiny_url, roomy_url):
                    async with session.get(f"{url}/metrics") as resp:
                        live |= exposed_names(await resp.text())
                # The worker supervisor's own series exist only with workers
                # (test_prometheus_workers.py requires them).
                supervisor = supervisor_names()
                for where, expr in panel_targets(load_dashboard()):
                    unknown = (metric_names(expr) - live - recording_rule_names() - {"up"}
                               - supervisor)
                    assert not unknown, f"{where}: not exported: {sorted(unknown)}"
            finally:
                stop.set()
                await asyncio.gather(*clients, return_exceptions=True)
