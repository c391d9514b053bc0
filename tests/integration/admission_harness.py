"""Loopback rigs for the admission tests: small emulated buckets, the real router, and an
open-loop sender that records what every request saw.

Time scale 0.5 of ``llama-3.1-8b-2k``: prefill 40 ms, 0.893 ms per further token, so a 16-token
request holds its slot for D = 53.4 ms. Slot counts are set on both sides (emulator artifact and
bucket), so the router's shape is the backend's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry

from lpu_emulator.lengths import OutputLength
from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact
from router.app import build_app
from router.config import parse_config
from router.server import running

MODEL = "llama-3.1-8b-instant"
ARTIFACT = "llama-3.1-8b-2k"
SCALE = 0.5
PREFILL_S = 0.080 * SCALE
PER_TOKEN_S = 0.001786 * SCALE
JITTER_S = 0.100
"""Generous allowance for delivery lateness on a busy 2-core machine, where the client, the
router and the emulators share one event loop (plus any stall of this process's event loop that
:class:`LoopLag` saw while the request was waiting). Without admission the same load queues for
seconds, so the bound still separates kept promises from broken ones."""


def service_s(tokens: int) -> float:
    """Seconds a request making ``tokens`` tokens holds its slot."""
    return PREFILL_S + (tokens - 1) * PER_TOKEN_S


@contextlib.asynccontextmanager
async def emulators(*, slots: int, replicas: int = 1, output_length: OutputLength | None = None,
                    seed: int = 0) -> AsyncIterator[list[str]]:
    """Emulated backends of ``slots`` slots each on loopback; yield their URLs."""
    art = replace(builtin_artifact(ARTIFACT), slots=slots)
    options = EmulatorOptions(art, time_scale=SCALE, seed=seed, tick_s=0.002,
                              output_length=output_length or OutputLength())
    async with start_emulators(options, replicas=replicas) as urls:
        yield urls


def router_raw(urls: list[str], *, slots: int, ttft_slo_s: float,
               bucket: Mapping[str, Any] | None = None,
               admission: Mapping[str, Any] | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A one-bucket timeline config in front of ``urls``."""
    raw: dict[str, Any] = {
        "health": {"interval_s": 0.5},
        "admission": {"mode": "timeline", **(admission or {})},
        "buckets": [{"name": "small", "model": MODEL, "artifact": ARTIFACT, "slots": slots,
                     "time_scale": SCALE, "backends": urls, "ttft_slo_s": ttft_slo_s,
                     **(bucket or {})}],
    }
    raw.update(extra or {})
    return raw


@dataclass
class Router:
    url: str
    app: web.Application
    registry: CollectorRegistry

    def metric(self, name: str, labels: dict[str, str]) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def router(raw: dict[str, Any]) -> AsyncIterator[Router]:
    """The real router app on an ephemeral loopback port; waits for its first /load polls."""
    registry = CollectorRegistry()
    app = build_app(parse_config(raw), registry=registry)
    async with running(app) as url:
        await asyncio.sleep(0.15)
        yield Router(url, app, registry)


def client_session() -> aiohttp.ClientSession:
    """A client without a connection cap of its own (the sender must not queue either)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=30))


def chat_body(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": "Tell me something."}], **extra}


@dataclass
class Shot:
    """One request as the client saw it; times in seconds from its intended send time."""

    tag: str
    intended: float = 0.0
    """When it was meant to be sent (monotonic clock)."""
    status: int = 0
    ttft_s: float | None = None
    """First SSE bytes (admitted streams)."""
    done_s: float = 0.0
    """Whole answer read (for a refusal: its latency)."""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def admitted(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class Planned:
    at_s: float
    tag: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def poisson_times(rate: float, duration_s: float, seed: int) -> list[float]:
    """Arrival offsets (seconds) of a Poisson process of ``rate`` per second."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration_s * 2) + 16)
    times = np.cumsum(gaps)
    return [float(t) for t in times[times < duration_s]]


async def _shoot(session: aiohttp.ClientSession, url: str, p: Planned, t0: float) -> Shot:
    intended = t0 + p.at_s
    shot = Shot(p.tag, intended)
    async with session.post(url + "/v1/chat/completions", json=p.body, headers=p.headers) as r:
        shot.status = r.status
        shot.headers = {k.lower(): v for k, v in r.headers.items()}
        if r.status == 200:
            chunks = []
            async for chunk in r.content.iter_any():
                if shot.ttft_s is None:
                    shot.ttft_s = time.monotonic() - intended
                chunks.append(chunk)
            shot.body = b"".join(chunks)
        else:
            shot.body = await r.read()
    shot.done_s = time.monotonic() - intended
    return shot


async def open_loop(session: aiohttp.ClientSession, url: str,
                    plan: Iterable[Planned]) -> list[Shot]:
    """Send every planned request at its time, never waiting for answers (open loop)."""
    t0 = time.monotonic() + 0.02
    tasks: list[asyncio.Task[Shot]] = []
    for p in sorted(plan, key=lambda p: p.at_s):
        delay = t0 + p.at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_shoot(session, url, p, t0)))
    return list(await asyncio.gather(*tasks))


class LoopLag:
    """Stalls of this process's event loop (a busy machine, a collection): while the loop does
    not run, no byte is read, so a client-side TTFT grows by the stall whatever the router and
    the backend did. Use as ``async with LoopLag() as lag``; it wakes every ``tick_s``."""

    def __init__(self, tick_s: float = 0.002, threshold_s: float = 0.003) -> None:
        self.tick_s = tick_s
        self.threshold_s = threshold_s
        self.stalls: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            late = now - before - self.tick_s
            if late > self.threshold_s:
                self.stalls.append((now - late, now))

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def within(self, start: float, end: float) -> float:
        """Seconds of stall between ``start`` and ``end``."""
        return sum(min(e, end) - max(s, start) for s, e in self.stalls if s < end and e > start)


class AccessLog(logging.Handler):
    """The router's access lines by request id (its own view of each request's TTFT)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: dict[str, dict[str, Any]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(record.getMessage())
        self.lines[line["request_id"]] = line

    def __enter__(self) -> AccessLog:
        logger = logging.getLogger("lpu_router.access")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("lpu_router.access")
        logger.removeHandler(self)
        logger.setLevel(self._level)

    async def __aenter__(self) -> AccessLog:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


def late_admitted(shots: Iterable[Shot], bound_s: float, lag: LoopLag | None = None,
                  log: AccessLog | None = None) -> list[str]:
    """Admitted requests whose first byte came later than ``bound_s`` (plus the stalls ``lag``
    saw while each was waiting), described."""
    late = []
    for s in shots:
        if not s.admitted:
            continue
        stalled = 0.0
        if lag is not None and s.ttft_s is not None:
            stalled = lag.within(s.intended, s.intended + s.ttft_s)
        if s.ttft_s is None or s.ttft_s > bound_s + stalled:
            seen = log.lines.get(s.headers.get("x-request-id", "")) if log is not None else None
            late.append(f"{s.tag}: ttft {s.ttft_s}, predicted"
                        f" {s.headers.get('x-lpu-predicted-ttft-ms')} ms, stalled {stalled:.3f},"
                        f" router saw {seen}")
    return late
