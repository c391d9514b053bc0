"""What ``lpu-bench scale-out`` measures in a cell: the open loop of streamed requests spread over
the routers, the routers' counters and the backends' recorded schedules, and the cell's figures
(see :mod:`benchmarks.scale_out`)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["API_KEY", "MODEL", "TOKENS", "TTFT_SLO_S", "Shot", "observe", "open_loop",
           "summarize"]

MODEL = "llama-3.1-8b-instant"
TOKENS = 32
TTFT_SLO_S = 0.5
API_KEY = "sk-scale-out"


@dataclass
class Shot:
    sent: float
    status: int = 0
    ttft_s: float | None = None
    done_s: float | None = None
    request_id: str = ""
    complete: bool = False


async def _shoot(session: aiohttp.ClientSession, url: str, body: bytes, shot: Shot) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    try:
        async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
            shot.status = r.status
            shot.request_id = r.headers.get("x-request-id", "")
            if r.status != 200:
                await r.read()
                shot.done_s = time.monotonic() - shot.sent
                return
            async for chunk in r.content.iter_any():
                if shot.ttft_s is None and b"data: {" in chunk:
                    shot.ttft_s = time.monotonic() - shot.sent
                if b"data: [DONE]" in chunk:
                    shot.complete = True
            shot.done_s = time.monotonic() - shot.sent
    except (aiohttp.ClientError, TimeoutError, ConnectionError):
        shot.status = -1


async def open_loop(urls: list[str], rate: float, duration_s: float, seed: int) -> list[Shot]:
    """Poisson arrivals at ``rate`` for ``duration_s``, round robin over ``urls``."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, int(rate * duration_s * 1.5) + 10))
    times = times[times < duration_s]
    body = json.dumps({"model": MODEL, "stream": True, "max_tokens": TOKENS, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Count to fifty."}]}).encode()
    shots: list[Shot] = []
    tasks: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.monotonic()
        for i, t in enumerate(times):
            delay = t0 + float(t) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            shot = Shot(time.monotonic())
            shots.append(shot)
            tasks.append(asyncio.create_task(_shoot(session, urls[i % len(urls)], body, shot)))
        await asyncio.gather(*tasks)
    return shots


async def _get(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as r:
        return await r.text()


def _sum(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and (labels or {}).items() <= s.labels.items():
                total += s.value
    return total


async def observe(routers: list[str], backends: list[str]) -> tuple[dict[str, float],
                                                                      list[dict[str, Any]]]:
    """The routers' counters (summed; each URL is a whole pod) and the backends' schedules."""
    async with aiohttp.ClientSession() as s:
        texts = [await _get(s, u + "/metrics") for u in routers]
        docs = [json.loads(await _get(s, u + "/admin/schedule")) for u in backends]
    p = "lpu_router_"
    counts = {
        "admitted": sum(_sum(t, p + "requests_admitted_total") for t in texts),
        "backend_refusals": sum(_sum(t, p + "upstream_errors_total", {"kind": "deadline"})
                                for t in texts),
        "retries": sum(_sum(t, p + "retries_total") for t in texts),
        "schedule_merged": sum(_sum(t, p + "schedule_reports_total", {"result": "merged"})
                               for t in texts),
        "schedule_skipped": sum(_sum(t, p + "schedule_reports_total", {"result": "skipped"})
                                for t in texts),
        # The adaptive margin in force at the end (the largest over the routers): it grows with
        # the prediction errors a busy machine causes, and admits less while it is large.
        "margin_s": max(_max(t, p + "admission_limit", {"limit": "margin_seconds"})
                        for t in texts),
    }
    entries = [e for doc in docs for e in doc["requests"]]
    return counts, entries


def _max(text: str, name: str, labels: dict[str, str]) -> float:
    values = [s.value for family in text_string_to_metric_families(text)
              for s in family.samples
              if s.name == name and labels.items() <= s.labels.items()]
    return max(values, default=0.0)


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) * 1e3 if xs else None


def summarize(shots: list[Shot], counts: dict[str, float], entries: list[dict[str, Any]],
              cap: float, duration_s: float) -> dict[str, Any]:
    """One cell's figures (see the module docstring)."""
    admitted = [s for s in shots if s.status == 200]
    refused = [s for s in shots if s.status in (429, 503)]
    # Goodput counts completions that ended within the load's window: a rate over the window
    # (the requests still running when it closes are not counted, nor their share of it).
    t_end = (min(s.sent for s in shots) if shots else 0.0) + duration_s
    good = [s for s in admitted if s.complete and s.ttft_s is not None
            and s.ttft_s <= TTFT_SLO_S and s.done_s is not None and s.sent + s.done_s <= t_end]
    late_client = [s for s in admitted if s.ttft_s is None or s.ttft_s > TTFT_SLO_S]
    ran = [e for e in entries if e["state"] != "cancelled" or e["end"] > e["start"]]
    late_sched = [e for e in ran if e["deadline_s"] is not None
                  and e["first_token"] - e["arrival"] > float(e["deadline_s"]) + 1e-9]
    n_admitted = max(counts["admitted"], 1.0)
    refusal_ms = [s.done_s for s in refused if s.done_s is not None]
    return {
        "offered": len(shots),
        "admitted": len(admitted),
        "refused": len(refused),
        "errors": len(shots) - len(admitted) - len(refused),
        "goodput_rps": len(good) / duration_s,
        "goodput_fraction": len(good) / duration_s / cap,
        "ttft_violations_schedule": len(late_sched),
        "ttft_violations_client": len(late_client),
        "ran_on_backends": len(ran),
        "refusal_p50_ms": _pct(refusal_ms, 50),
        "refusal_p99_ms": _pct(refusal_ms, 99),
        "backend_refusals_per_admitted": counts["backend_refusals"] / n_admitted,
        "retries_per_admitted": counts["retries"] / n_admitted,
        "schedule_merged_per_admitted": counts["schedule_merged"] / n_admitted,
        "schedule_skipped_per_admitted": counts["schedule_skipped"] / n_admitted,
        "margin_ms": counts["margin_s"] * 1e3,
        "client_ttft_p50_ms": _pct([s.ttft_s for s in admitted if s.ttft_s is not None], 50),
        "client_ttft_p99_ms": _pct([s.ttft_s for s in admitted if s.ttft_s is not None], 99),
    }
