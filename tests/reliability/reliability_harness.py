"""Fixtures of the reliability tests: real emulators and fake backends behind the real router,
raw sockets, and the invariant every test ends with (:func:`assert_settled`).

The invariant: every request the router admitted ended as exactly one of completed, failed or
cancelled (``admitted == completed + failed + cancelled`` per bucket), and once the load stops
the in-flight gauges, the queue depth, the admitter's own counts and the drain counter are zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lpu_emulator.faults import FaultSettings
from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact
from router.admission.off import OffAdmitter
from router.app import ADMITTER, build_app
from router.config import RouterConfig, parse_config
from router.lifecycle import LIFECYCLE
from router.server import running

MODEL = "llama-3.1-8b-instant"
ARTIFACT = "llama-3.1-8b-2k"
CANCELLED = "lpu:requests_cancelled_total"


@dataclass
class Stack:
    url: str
    backends: list[str]
    registry: CollectorRegistry
    app: web.Application
    config: RouterConfig

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    def metric(self, name: str, labels: dict[str, str]) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def finished(self, outcome: str, bucket: str = "short") -> float:
        return self.metric("lpu_router_requests_finished_total",
                           {"bucket": bucket, "outcome": outcome})

    def rejected(self, reason: str) -> float:
        total = 0.0
        for fam in self.registry.collect():
            if fam.name == "lpu_router_requests_rejected":
                total += sum(s.value for s in fam.samples
                             if s.name.endswith("_total") and s.labels.get("reason") == reason)
        return total


def router_config(backends: list[str], *, extra: dict[str, Any] | None = None,
                  bucket: dict[str, Any] | None = None, time_scale: float = 0.05,
                  mode: str = "off") -> RouterConfig:
    """One bucket ``short`` of :data:`MODEL` over ``backends``; ``extra`` replaces sections."""
    raw: dict[str, Any] = {
        "admission": {"mode": mode},
        "health": {"interval_s": 0.1, "timeout_s": 0.5, "eject_after_failures": 2,
                   "eject_for_s": 0.3},
        "timeouts": {"connect_s": 0.5, "read_s": 2.0},
        "buckets": [{"name": "short", "model": MODEL, "artifact": ARTIFACT,
                     "time_scale": time_scale, "backends": backends, **(bucket or {})}],
    }
    raw.update(extra or {})
    return parse_config(raw)


def emulator_options(time_scale: float = 0.05, slots: int | None = None,
                     **faults: float) -> EmulatorOptions:
    artifact = builtin_artifact(ARTIFACT)
    if slots is not None:
        artifact = dataclasses.replace(artifact, slots=slots)
    return EmulatorOptions(artifact=artifact, time_scale=time_scale,
                           faults=FaultSettings(**faults))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serve_router(config: RouterConfig, backends: list[str]) -> AsyncIterator[Stack]:
    registry = CollectorRegistry()
    app = build_app(config, registry=registry)
    async with running(app, server=config.server) as url:
        yield Stack(url, backends, registry, app, config)


@contextlib.asynccontextmanager
async def emulator_stack(*, time_scale: float = 0.05, replicas: int = 1,
                         extra: dict[str, Any] | None = None, bucket: dict[str, Any] | None = None,
                         mode: str = "off", slots: int | None = None,
                         **faults: float) -> AsyncIterator[Stack]:
    """Emulated replicas (faults as given; ``slots`` overrides the artifact's) behind the
    router."""
    options = emulator_options(time_scale, slots, **faults)
    async with start_emulators(options, replicas) as urls:
        if slots is not None:
            bucket = {"slots": slots, **(bucket or {})}
        config = router_config(urls, extra=extra, bucket=bucket, time_scale=time_scale,
                               mode=mode)
        async with serve_router(config, urls) as stack:
            yield stack


# -- fake backends -------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeBackend:
    url: str
    requests: list[web.Request] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def fake_backend(completion: Handler) -> AsyncIterator[FakeBackend]:
    """An aiohttp backend on loopback: ``/readyz`` 200, completions by ``completion``; it
    records every completion request's headers."""
    fake = FakeBackend("")

    async def recorded(request: web.Request) -> web.StreamResponse:
        fake.headers.append(dict(request.headers))
        return await completion(request)

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_post("/v1/chat/completions", recorded)
    app.router.add_post("/v1/completions", recorded)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def dead_port() -> int:
    """A loopback port with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- clients -------------------------------------------------------------------------------

def chat(max_tokens: Any = 8, *, stream: Any = False, **more: Any) -> dict[str, Any]:
    """A chat body; ``max_tokens`` and ``stream`` may be of any type (bad-input tests)."""
    return {"model": MODEL, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "Tell me something."}], **more}


async def post(stack: Stack, body: dict[str, Any] | bytes, *, path: str = "/v1/chat/completions",
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as s, s.post(stack.url + path, data=data,
                                                    headers=hdrs) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


def error_code(body: bytes) -> str | None:
    """The OpenAI error code of an error body (asserting the shape)."""
    doc = json.loads(body)
    err = doc["error"]
    assert set(err) == {"message", "type", "param", "code"}, doc
    assert isinstance(err["message"], str) and err["message"]
    code: str | None = err["code"]
    return code


async def open_raw(stack: Stack, head: bytes) -> tuple[asyncio.StreamReader,
                                                       asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(head)
    await writer.drain()
    return reader, writer


def raw_post(body: bytes, path: str = "/v1/chat/completions", *, length: int | None = None
             ) -> bytes:
    n = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
            f"Content-Length: {n}\r\n\r\n").encode() + body


async def close_hard(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def emulator_cancelled(urls: list[str]) -> float:
    total = 0.0
    async with aiohttp.ClientSession() as s:
        for url in urls:
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                if line.startswith(CANCELLED + " "):
                    total += float(line.rsplit(" ", 1)[1])
    return total


# -- the invariant -------------------------------------------------------------------------

def invariant_problems(metrics_text: str) -> list[str]:
    """Problems with the accounting in a ``/metrics`` text (empty: it holds)."""
    admitted: dict[str, float] = {}
    finished: dict[str, float] = {}
    problems: list[str] = []
    for fam in text_string_to_metric_families(metrics_text):
        for s in fam.samples:
            b = s.labels.get("bucket", "")
            if s.name == "lpu_router_requests_admitted_total":
                admitted[b] = admitted.get(b, 0.0) + s.value
            elif s.name == "lpu_router_requests_finished_total":
                if s.labels["outcome"] not in ("completed", "failed", "cancelled"):
                    problems.append(f"unknown outcome {s.labels}")
                finished[b] = finished.get(b, 0.0) + s.value
            elif s.name in ("lpu_router_in_flight", "lpu_router_queue_depth") and s.value:
                problems.append(f"{s.name}{s.labels} = {s.value}")
    for b in sorted(set(admitted) | set(finished)):
        if admitted.get(b, 0.0) != finished.get(b, 0.0):
            problems.append(f"bucket {b}: admitted {admitted.get(b, 0.0)} !="
                            f" completed+failed+cancelled {finished.get(b, 0.0)}")
    return problems


def assert_invariant(metrics_text: str) -> None:
    problems = invariant_problems(metrics_text)
    assert not problems, problems


def _admitter_problems(stack: Stack) -> list[str]:
    admitter = stack.app[ADMITTER]
    out: list[str] = []
    if isinstance(admitter, OffAdmitter):
        for b in stack.config.buckets:
            if admitter.in_flight(b.name):
                out.append(f"off admitter: {admitter.in_flight(b.name)} in flight in {b.name}")
    snapshot = getattr(admitter, "snapshot", None)
    if callable(snapshot):
        for name, b in snapshot()["buckets"].items():
            if b["in_flight"] or b["queue_depth"]:
                out.append(f"timeline {name}: in_flight {b['in_flight']},"
                           f" queue {b['queue_depth']}")
    if stack.app[LIFECYCLE].in_progress:
        out.append(f"{stack.app[LIFECYCLE].in_progress} completion handlers still running")
    return out


async def assert_settled(stack: Stack, *, within_s: float = 10.0) -> str:
    """Wait (bounded) for the load to drain, then assert the invariant; return /metrics."""
    text = ""
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    until = loop.time() + within_s
    async with aiohttp.ClientSession() as s:
        while True:
            async with s.get(stack.url + "/metrics") as r:
                text = await r.text()
            problems = invariant_problems(text) + _admitter_problems(stack)
            if not problems or loop.time() > until:
                break
            await asyncio.sleep(0.05)
    assert not problems, problems
    return text
