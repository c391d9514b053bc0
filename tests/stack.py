"""The router in front of emulated or fake backends, in this process on loopback: what the
integration and reliability tests share (``tests/conftest.py`` offers it as fixtures; the
subprocess variants are in ``tests/live_processes.py``, the emulator's recorded schedule in
``tests/recorded_schedule.py``).

* :class:`Stack`: a running router app (URL, app, metric registry, config, backends) and
  :func:`serve_router` / :func:`router` / :func:`emulator_stack` / :func:`two_bucket_stack`,
  which start one;
* the admission rig (:data:`SCALE`, :func:`rig_emulators`, :func:`router_raw`, :func:`router`):
  small emulated buckets of ``llama-3.1-8b-2k`` at time scale 0.5, slot counts set on both
  sides, behind a timeline bucket ``small``;
* :func:`fake_backend`: an aiohttp backend whose completions a test writes;
* clients: :func:`chat`, :func:`post`, raw sockets, :func:`error_code`;
* the invariant every reliability test ends with (:func:`assert_settled`): every request the
  router admitted ended as exactly one of completed, failed or cancelled (``admitted ==
  completed + failed + cancelled`` per bucket), and once the load stops the in-flight gauges,
  the queue depth, the admitter's own counts and the running handlers are zero;
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lpu_emulator.faults import FaultSettings
from lpu_emulator.lengths import OutputLength
from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact
from router.admission import Admitter
from router.app import ADMITTER, build_app
from router.config import RouterConfig, parse_config
from router.lifecycle import LIFECYCLE
from router.server import running

MODEL = "llama-3.1-8b-instant"
ARTIFACT = "llama-3.1-8b-2k"
CANCELLED = "lpu:requests_cancelled_total"


# -- the router stack ----------------------------------------------------------------------

@dataclass
class Stack:
    """A router app serving on loopback, with its own metric registry."""

    url: str
    app: web.Application
    registry: CollectorRegistry
    config: RouterConfig

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    @property
    def buckets(self) -> dict[str, list[str]]:
        """Each bucket's backend URLs."""
        return {b.name: list(b.backends) for b in self.config.buckets}

    @property
    def backends(self) -> list[str]:
        """Every backend URL, each once, in config order."""
        return list(dict.fromkeys(u for b in self.config.buckets for u in b.backends))

    def metric(self, name: str, labels: dict[str, str]) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def finished(self, outcome: str, bucket: str = "short") -> float:
        return self.metric("lpu_router_requests_finished_total",
                           {"bucket": bucket, "outcome": outcome})

    def rejected(self, reason: str) -> float:
        """Refusals for ``reason`` over every bucket and priority."""
        total = 0.0
        for fam in self.registry.collect():
            if fam.name == "lpu_router_requests_rejected":
                total += sum(s.value for s in fam.samples
                             if s.name.endswith("_total") and s.labels.get("reason") == reason)
        return total


@contextlib.asynccontextmanager
async def serve_router(config: RouterConfig, *, polls_s: float = 0.0) -> AsyncIterator[Stack]:
    """The real router app for ``config`` on an ephemeral loopback port (its ``[server]``
    limits); ``polls_s``: wait that long first (for the first ``/load`` polls)."""
    registry = CollectorRegistry()
    app = build_app(config, registry=registry)
    async with running(app, server=config.server) as url:
        if polls_s:
            await asyncio.sleep(polls_s)
        yield Stack(url, app, registry, config)


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


def emulator_options(time_scale: float = 0.05, slots: int | None = None, *,
                     output_length: OutputLength | None = None, seed: int = 0,
                     tick_s: float | None = None, **faults: float) -> EmulatorOptions:
    """:data:`ARTIFACT` (``slots`` overriding its own) with ``faults`` as
    :class:`~lpu_emulator.faults.FaultSettings` fields."""
    artifact = builtin_artifact(ARTIFACT)
    if slots is not None:
        artifact = dataclasses.replace(artifact, slots=slots)
    options = EmulatorOptions(artifact=artifact, time_scale=time_scale, seed=seed,
                              faults=FaultSettings(**faults))  # type: ignore[arg-type]
    if output_length is not None:
        options = dataclasses.replace(options, output_length=output_length)
    if tick_s is not None:
        options = dataclasses.replace(options, tick_s=tick_s)
    return options


@contextlib.asynccontextmanager
async def emulator_stack(*, time_scale: float = 0.05, replicas: int = 1,
                         extra: dict[str, Any] | None = None, bucket: dict[str, Any] | None = None,
                         mode: str = "off", slots: int | None = None,
                         **faults: float) -> AsyncIterator[Stack]:
    """Emulated replicas (faults as given; ``slots`` overrides the artifact's) behind the
    router's bucket ``short``."""
    options = dataclasses.replace(emulator_options(time_scale, slots),
                                  faults=FaultSettings(**faults))  # type: ignore[arg-type]
    async with start_emulators(options, replicas) as urls:
        if slots is not None:
            bucket = {"slots": slots, **(bucket or {})}
        config = router_config(urls, extra=extra, bucket=bucket, time_scale=time_scale,
                               mode=mode)
        async with serve_router(config) as stack:
            yield stack


TWO_BUCKETS = (("short", "llama-3.1-8b-2k"), ("medium", "llama-3.1-8b-8k"))


@contextlib.asynccontextmanager
async def two_bucket_stack(*, time_scale: float = 0.05, replicas: int = 2,
                           extra: dict[str, Any] | None = None) -> AsyncIterator[Stack]:
    """Buckets ``short`` (2k) and ``medium`` (8k) of :data:`MODEL`, admission off, emulated
    replicas behind each; ``extra`` replaces sections."""
    async with contextlib.AsyncExitStack() as stack:
        backends: dict[str, list[str]] = {}
        for name, artifact in TWO_BUCKETS:
            options = EmulatorOptions(artifact=builtin_artifact(artifact), time_scale=time_scale)
            backends[name] = await stack.enter_async_context(
                start_emulators(options, replicas=replicas))
        raw: dict[str, Any] = {
            "admission": {"mode": "off"},
            "health": {"interval_s": 0.2},
            "buckets": [{"name": name, "model": MODEL, "artifact": artifact,
                         "time_scale": time_scale, "backends": backends[name]}
                        for name, artifact in TWO_BUCKETS],
        }
        raw.update(extra or {})
        yield await stack.enter_async_context(serve_router(parse_config(raw)))


# -- the admission rig ---------------------------------------------------------------------

SCALE = 0.5
"""Time scale of the admission rig: prefill 40 ms, 0.893 ms per further token, so a 16-token
request holds its slot for D = 53.4 ms."""
PREFILL_S = builtin_artifact(ARTIFACT).prefill_s * SCALE
PER_TOKEN_S = builtin_artifact(ARTIFACT).per_token_s * SCALE


def service_s(tokens: int) -> float:
    """Seconds a request making ``tokens`` tokens holds its slot in the admission rig."""
    return builtin_artifact(ARTIFACT).scaled(SCALE).service_time(tokens)


@contextlib.asynccontextmanager
async def rig_emulators(*, slots: int, replicas: int = 1, output_length: OutputLength | None = None,
                    seed: int = 0) -> AsyncIterator[list[str]]:
    """The admission rig's backends: ``replicas`` of ``slots`` slots each; yield their URLs."""
    options = emulator_options(SCALE, slots, output_length=output_length, seed=seed,
                               tick_s=0.002)
    async with start_emulators(options, replicas=replicas) as urls:
        yield urls


def router_raw(urls: list[str], *, slots: int, ttft_slo_s: float,
               bucket: Mapping[str, Any] | None = None,
               admission: Mapping[str, Any] | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The admission rig's router: one timeline bucket ``small`` in front of ``urls``."""
    raw: dict[str, Any] = {
        "health": {"interval_s": 0.5},
        "admission": {"mode": "timeline", **(admission or {})},
        "buckets": [{"name": "small", "model": MODEL, "artifact": ARTIFACT, "slots": slots,
                     "time_scale": SCALE, "backends": urls, "ttft_slo_s": ttft_slo_s,
                     **(bucket or {})}],
    }
    raw.update(extra or {})
    return raw


def router(raw: dict[str, Any]) -> contextlib.AbstractAsyncContextManager[Stack]:
    """:func:`serve_router` for a raw config mapping, once its first ``/load`` polls came."""
    return serve_router(parse_config(raw), polls_s=0.15)


# -- fake backends -------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeBackend:
    url: str
    headers: list[dict[str, str]] = field(default_factory=list)
    """Every completion request's headers, in arrival order."""


@contextlib.asynccontextmanager
async def fake_backend(completion: Handler) -> AsyncIterator[FakeBackend]:
    """An aiohttp backend on loopback: ``/readyz`` 200, completions by ``completion``."""
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


StartEmulators = Callable[..., Awaitable[list[str]]]
"""The ``emulators`` fixture: ``await emulators(options=None, replicas=1)`` -> URLs."""
StartRouter = Callable[[RouterConfig], Awaitable["Stack"]]
"""The ``router_stack`` fixture: ``await router_stack(config)`` -> :class:`Stack`."""
StartFake = Callable[[Handler], Awaitable[FakeBackend]]
"""The ``fake_backend`` fixture: ``await fake_backend(handler)`` -> :class:`FakeBackend`."""


def dead_port() -> int:
    """A loopback port with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- clients -------------------------------------------------------------------------------

def client_session() -> aiohttp.ClientSession:
    """A client without a connection cap of its own (a sender must not queue either)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=30))


def chat(max_tokens: Any = 8, *, stream: Any = False, **more: Any) -> dict[str, Any]:
    """A chat body; ``max_tokens`` and ``stream`` may be of any type (bad-input tests)."""
    return {"model": MODEL, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "Tell me something."}], **more}


async def post(stack: Stack, body: dict[str, Any] | bytes, *, path: str = "/v1/chat/completions",
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh session: status, lower-cased headers, body."""
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


def raw_post(body: dict[str, Any] | bytes, path: str = "/v1/chat/completions", *,
             length: int | None = None, extra: str = "") -> bytes:
    """The bytes of a POST of ``body`` (a dict is sent as JSON); ``length``: the
    Content-Length to claim; ``extra``: more header lines, each ending in CRLF."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    n = len(data) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
            f"Content-Length: {n}\r\n{extra}\r\n").encode() + data


async def http_exchange(port: int, request: bytes, *, timeout_s: float = 15.0) -> bytes:
    """Send ``request`` on a new connection to ``port`` and read until the peer closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        await close_hard(writer)


async def close_hard(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def emulator_metric(urls: list[str], name: str) -> float:
    """The sum of one un-labelled sample over emulators' ``/metrics`` (0 when absent)."""
    total = 0.0
    async with aiohttp.ClientSession() as s:
        for url in urls:
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    total += float(line.rsplit(" ", 1)[1])
                    break
    return total


async def emulator_cancelled(urls: list[str]) -> float:
    """Requests the emulators counted as cancelled by their client."""
    return await emulator_metric(urls, CANCELLED)


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
    admitter = cast(Admitter, stack.app[ADMITTER])
    out: list[str] = []
    for name, b in admitter.snapshot()["buckets"].items():
        if b["in_flight"] or b.get("queue_depth"):
            out.append(f"{name}: in_flight {b['in_flight']}, queue {b.get('queue_depth')}")
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


async def post_counted(session: aiohttp.ClientSession, base: str, body: dict[str, Any],
                       statuses: collections.Counter[str]) -> None:
    """POST ``body`` to ``base``'s chat completions and count how it ended in ``statuses``:
    ``"200"`` for a whole answer (a stream with its ``[DONE]``), else the status and the first
    bytes of the body, or the client error's name."""
    try:
        async with session.post(base + "/v1/chat/completions", json=body) as r:
            data = await r.read()
            ok = r.status == 200 and (not body["stream"] or b"[DONE]" in data)
            statuses[str(r.status) if ok else f"{r.status} {data[:120]!r}"] += 1
    except aiohttp.ClientError as exc:
        statuses[type(exc).__name__] += 1
