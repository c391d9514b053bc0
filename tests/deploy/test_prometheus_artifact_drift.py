"""The artifact drift alert, live: a real Prometheus fires ``LpuRouterArtifactDrift`` for the
replica whose artifact runs slower than it declares, and for no other.

Two emulator processes of ``llama-3.1-8b-2k`` (time scale 2: prefill 160 ms, 3.57 ms per
token): one runs every token 1.2x slower than its ``/load`` declares
(``--actual-per-token-factor 1.2``), the other as declared. Each stands alone behind its own
bucket of a router in this process, which is offered a few streams one at a time per bucket
(each on an idle slot, so both prefill and per-token samples are taken). A Prometheus server
scrapes the router every second and evaluates the project's alert rules every second.

The rule file Prometheus loads is ``deploy/prometheus/rules/alerts.rules.yml`` with one change:
the drift alert's ``for: 10m`` becomes ``for: 2s`` (a test cannot wait ten minutes). Its
expression is the file's, unchanged (asserted), so what fires is the shipped condition. The
test then reads ``/api/v1/alerts``: the alert fires for the drifting replica's ``per_token``
timing, and no drift alert (pending or firing) names the steady replica, whose observed series
Prometheus holds (so the absence is not for want of data).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from deploy_support import RULES_DIR, load_yaml
from live_processes import StartEmulatorProcess
from live_prometheus import prometheus, query, wait_ready
from prometheus_client import CollectorRegistry

from router.app import build_app
from router.config import parse_config
from router.server import running

ALERT = "LpuRouterArtifactDrift"
MODEL = "llama-3.1-8b-instant"
ARTIFACT = "llama-3.1-8b-2k"
SCALE = 2.0
"""Prefill 160 ms: the router's own and loopback's ~2 ms stay well inside the 5 % tolerance."""
TOKENS = 64
STREAMS = 6
"""Streams per bucket, one at a time (the estimate is the median of them)."""
FOR = "2s"
DEADLINE_S = 25.0
"""Longest wait, after the traffic, for the alert to fire (typically ~5 s)."""


def _rules_with_short_for(tmp: Path) -> tuple[Path, str]:
    """The shipped alert rules with the drift alert's ``for`` set to :data:`FOR`; the file
    and the alert's expression as shipped."""
    doc: dict[str, Any] = load_yaml(RULES_DIR / "alerts.rules.yml")
    [rule] = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == ALERT]
    rule["for"] = FOR
    path = tmp / "alerts.rules.yml"
    path.write_text(yaml.safe_dump(doc), "utf-8")
    return path, str(rule["expr"])


def _router_config(drifting: str, steady: str) -> dict[str, Any]:
    bucket = {"artifact": ARTIFACT, "time_scale": SCALE, "ttft_slo_s": 5.0}
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "health": {"interval_s": 0.5},
        "admission": {"mode": "timeline", "load_poll_interval_s": 0.1},
        "buckets": [
            {"name": "drifting", "model": "drifting-" + MODEL, "upstream_model": MODEL,
             "backends": [drifting], **bucket},
            {"name": "steady", "model": MODEL, "backends": [steady], **bucket},
        ],
    }


async def _streams(session: aiohttp.ClientSession, router_url: str, model: str) -> None:
    body = {"model": model, "max_tokens": TOKENS, "stream": True,
            "messages": [{"role": "user", "content": "Tell me about deterministic hardware."}]}
    for _ in range(STREAMS):  # one at a time: every stream starts on an idle slot
        async with session.post(f"{router_url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()


async def _drift_alerts(session: aiohttp.ClientSession, prom: str) -> list[dict[str, Any]]:
    async with session.get(f"{prom}/api/v1/alerts") as resp:
        body = await resp.json()
    return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == ALERT]


@pytest.mark.timeout(60)
async def test_the_drift_alert_fires_in_prometheus_for_the_drifting_replica_only(
        tmp_path: Path, emulator_process: StartEmulatorProcess) -> None:
    rules, expr = _rules_with_short_for(tmp_path)
    shipped = load_yaml(RULES_DIR / "alerts.rules.yml")
    assert expr == next(r["expr"] for g in shipped["groups"] for r in g["rules"]
                        if r.get("alert") == ALERT)
    [drifting] = await emulator_process(ARTIFACT, time_scale=SCALE, extra=[
        "--actual-per-token-factor", "1.2", "--tick-ms", "0"])
    [steady] = await emulator_process(ARTIFACT, time_scale=SCALE, extra=["--tick-ms", "0"])
    app = build_app(parse_config(_router_config(drifting, steady), "drift-live"),
                    registry=CollectorRegistry())
    async with running(app) as router_url:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "lpu-router", "static_configs": [
                {"targets": [urlsplit(router_url).netloc]}]}],
        }
        async with (
            prometheus(tmp_path, config) as prom,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
        ):
            await wait_ready(session, prom)
            await asyncio.gather(_streams(session, router_url, "drifting-" + MODEL),
                                 _streams(session, router_url, MODEL))
            deadline = time.monotonic() + DEADLINE_S
            while True:
                alerts = await _drift_alerts(session, prom)
                if any(a["state"] == "firing" for a in alerts):
                    break
                assert time.monotonic() < deadline, f"{ALERT} did not fire: {alerts}"
                await asyncio.sleep(0.5)

            firing = {(a["labels"]["backend"], a["labels"]["timing"]) for a in alerts
                      if a["state"] == "firing"}
            assert (drifting, "per_token") in firing, alerts
            assert all(a["labels"]["backend"] == drifting for a in alerts), alerts
            assert all(a["labels"]["bucket"] == "drifting" for a in alerts), alerts
            # The steady replica's observed timings were in Prometheus, within tolerance.
            for timing in ("prefill", "per_token"):
                ratio = await query(
                    session, prom,
                    f'lpu_router_backend_observed_seconds{{backend="{steady}",timing="{timing}"}}'
                    f' / lpu_router_backend_declared_seconds')
                assert len(ratio) == 1, (timing, ratio)
                assert abs(float(ratio[0]["value"][1]) - 1) < 0.05, (timing, ratio)
            [drift_ratio] = await query(
                session, prom,
                f'lpu_router_backend_observed_seconds{{backend="{drifting}",timing="per_token"}}'
                f' / lpu_router_backend_declared_seconds')
            assert 1.15 < float(drift_ratio["value"][1]) < 1.3, drift_ratio
