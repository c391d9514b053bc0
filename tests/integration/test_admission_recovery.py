"""Recovery after overload, real processes: ``lpu-router serve`` in front of ``lpu-emulator``.

A bucket of one replica with two slots (16-token requests hold a slot D = 53.4 ms: capacity
37.5 requests/s) takes bursts at 5x its capacity from an interactive tenant (never shed for
utilization), so the guard's window (1 s, shorter than a burst) is full when each burst ends.
Then standard probes come one at a time (not batch: on a loaded machine the adaptive margin can
outgrow batch's half of the SLO, and batch is then refused outright). Before each probe the
emulator's own ``/load`` tells whether its backlog has drained; the claims:

* a probe sent once the emulator reports no request running or waiting is admitted (the guard
  used to refuse every request for most of a window after a burst, while the replica was idle);
* a refused probe sent again at exactly its ``retry-after-ms``, with no other load meanwhile, is
  admitted (Retry-After used to be an estimate that ran out before the refusal's cause).

The test ends with the settle invariant on the router's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import aiohttp
from live_processes import emulator_process, router_process
from open_loop import Planned, open_loop
from stack import ARTIFACT, MODEL, SCALE, chat, client_session, invariant_problems, service_s

SLOTS = 2
TOKENS = 16
D = service_s(TOKENS)
SLO = 3 * D
CAPACITY = SLOTS / D
BURST_S = 1.5
CYCLES = 3
PROBES_PER_CYCLE = 6
KEY = {"Authorization": "Bearer sk-gold"}
PROBE_KEY = {"Authorization": "Bearer sk-silver"}


def _artifact(path: Path) -> Path:
    """The built-in artifact with two slots, as a TOML file for ``lpu-emulator --artifact``."""
    text = (files("lpu_protocol") / "artifacts" / f"{ARTIFACT}.toml").read_text()
    assert "\nslots = 8\n" in text
    path.write_text(text.replace("\nslots = 8\n", f"\nslots = {SLOTS}\n"))
    return path


def _config(path: Path, url: str) -> Path:
    path.write_text(f"""
[server]
host = "127.0.0.1"
port = 0

[admission]
mode = "timeline"
utilization_window_s = 1.0

[[tenants]]
name = "gold"
api_keys = ["sk-gold"]
priority = "interactive"

[[tenants]]
name = "silver"
api_keys = ["sk-silver"]
priority = "standard"

[[buckets]]
name = "small"
model = "{MODEL}"
artifact = "{ARTIFACT}"
time_scale = {SCALE}
slots = {SLOTS}
backends = ["{url}"]
ttft_slo_s = {SLO:.4f}
target_utilization = 0.5
""")
    return path


@dataclass
class Probe:
    cls: str
    idle: bool
    """The emulator reported no request running or waiting just before it was sent."""
    status: int
    reason: str | None = None
    retry_ms: int | None = None
    retry_status: int | None = None
    retry_reason: str | None = None
    message: str = ""


async def _send(session: aiohttp.ClientSession, url: str, cls: str
                ) -> tuple[int, dict[str, str], bytes]:
    """One probe; reads the whole answer (an admitted one runs to its end)."""
    async with session.post(url + "/v1/chat/completions", json=chat(TOKENS, stream=True),
                            headers=PROBE_KEY | {"x-priority": cls}) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


async def _idle(session: aiohttp.ClientSession, backend: str) -> bool:
    async with session.get(backend + "/load") as r:
        load = await r.json()
    return bool(load["running"] == 0 and load["waiting"] == 0)


async def _probe(session: aiohttp.ClientSession, url: str, backend: str, cls: str) -> Probe:
    idle = await _idle(session, backend)
    status, headers, body = await _send(session, url, cls)
    p = Probe(cls, idle, status)
    if status == 429:
        error = json.loads(body)["error"]
        assert error["code"] == "rate_limit_exceeded"
        p.reason, p.message = headers["x-lpu-reject-reason"], error["message"]
        if "retry-after-ms" not in headers:
            return p  # the assertions show it
        p.retry_ms = int(headers["retry-after-ms"])
        await asyncio.sleep(p.retry_ms / 1e3)
        p.retry_status, headers, _ = await _send(session, url, cls)
        p.retry_reason = headers.get("x-lpu-reject-reason")
    return p


async def _cycle(session: aiohttp.ClientSession, url: str, backend: str) -> list[Probe]:
    """A burst at 5x capacity, then probes one at a time once every burst request was sent."""
    gap = 1.0 / (5 * CAPACITY)
    plan = [Planned(i * gap, "burst", chat(TOKENS, stream=True), KEY)
            for i in range(round(BURST_S / gap))]
    burst = asyncio.create_task(open_loop(session, url, plan))
    await asyncio.sleep(BURST_S + 0.04)
    probes = []
    for _ in range(PROBES_PER_CYCLE):
        probes.append(await _probe(session, url, backend, "standard"))
        await asyncio.sleep(0.03)
    shots = await burst
    assert {s.status for s in shots} <= {200, 429}
    assert any(s.status == 429 for s in shots), "5x the capacity must be refused in part"
    return probes


async def _settled(session: aiohttp.ClientSession, url: str) -> None:
    until = time.monotonic() + 10.0
    while True:
        async with session.get(url + "/metrics") as r:
            problems = invariant_problems(await r.text())
        if not problems or time.monotonic() > until:
            break
        await asyncio.sleep(0.05)
    assert not problems, problems


async def test_after_a_burst_the_drained_bucket_admits_and_retry_after_is_kept(
    tmp_path: Path,
) -> None:
    art = _artifact(tmp_path / "two-slots.toml")
    async with emulator_process(str(art), time_scale=SCALE, extra=["--tick-ms", "2"]) as urls:
        cfg = _config(tmp_path / "router.toml", urls[0])
        async with router_process(cfg, log_level="WARNING") as (_, port), \
                client_session() as session:
            url = f"http://127.0.0.1:{port}"
            probes: list[Probe] = []
            for _ in range(CYCLES):
                probes += await _cycle(session, url, urls[0])
                await asyncio.sleep(1.2)  # the window empties: every cycle starts alike
            await _settled(session, url)

    table = "\n".join(map(str, probes))
    refused = [p for p in probes if p.status != 200]
    assert refused, f"no probe met the backlog:\n{table}"  # the test must see one
    # Every refusal sent again at its Retry-After is admitted.
    assert all(p.retry_status == 200 for p in refused), table
    # The first probe of each cycle sent after the emulator reported itself idle is admitted
    # (and every later one: nothing else is running).
    assert all(p.status == 200 for p in probes if p.idle), table
    for start in range(0, len(probes), PROBES_PER_CYCLE):
        assert any(p.idle for p in probes[start:start + PROBES_PER_CYCLE]), table
