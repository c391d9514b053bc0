"""The emulator's HTTP face: OpenAI's API over an exact schedule, plus operations endpoints.

Routes (one backend per app):

* ``POST /v1/chat/completions``, ``POST /v1/completions``: streaming and not.
  Request header ``x-lpu-deadline-ms`` (float, ms from receipt): if the first
  token cannot come by then, 429 ``deadline_unreachable`` at once. Response
  headers: ``x-request-id`` (echoed or generated), ``x-lpu-predicted-ttft-ms``,
  ``x-lpu-artifact``, ``x-lpu-artifact-version``, and ``x-lpu-schedule`` (the whole schedule
  once the request is in it; on a 429 ``deadline_unreachable`` or 503 ``queue_full`` the
  schedule as it is). Errors before the first byte
  are real statuses with OpenAI's JSON error body.
* ``GET /v1/models`` (and ``/v1/models/{id}``): the artifact's model and name.
* ``GET /load``: JSON a router predicts the wait from (see :meth:`Backend.load`).
* ``GET /metrics``: Prometheus text, vLLM names (:mod:`lpu_emulator.metrics`).
* ``GET /healthz`` (alive), ``GET /readyz`` (503 while compiling an artifact).
* ``GET|POST /admin/faults``, ``GET|POST /admin/artifact``, ``GET /admin/schedule``: see
  :mod:`lpu_emulator.admin`.

:func:`start_emulators` serves several independent backends from one process.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from lpu_emulator import admin
from lpu_emulator.backend import Backend, Refused
from lpu_emulator.delivery import Delivered, Deliverer
from lpu_emulator.frames import ResponseIdentity
from lpu_emulator.keys import BACKEND, DELIVERER, STARTED, WALL_CLOCK
from lpu_emulator.metrics import make_metrics
from lpu_emulator.options import EmulatorOptions
from lpu_emulator.recording import RECORDING, ScheduleRecording
from lpu_emulator.text import TokenText
from lpu_protocol.headers import (
    X_LPU_ARTIFACT,
    X_LPU_ARTIFACT_VERSION,
    X_LPU_DEADLINE_MS,
    X_LPU_PREDICTED_TTFT_MS,
    X_LPU_SCHEDULE,
)
from lpu_protocol.openai_api import APIError, model_not_found

__all__ = ["EmulatorOptions", "create_app", "error_response", "start_emulators"]

MAX_BODY_BYTES = 16 * 1024 * 1024


def error_response(err: APIError, headers: dict[str, str] | None = None) -> web.Response:
    """An OpenAI-shaped JSON error with its HTTP status."""
    return web.Response(
        status=err.status, body=err.to_json(), content_type="application/json", headers=headers
    )


def _hex_id() -> str:
    """32 random hex digits (an id's unique part, as ``uuid4().hex`` has them): from the
    process's generator, seeded from the OS at start and again in a forked child, where
    ``uuid4`` read the OS's random source on every call (two per request)."""
    return f"{random.getrandbits(128):032x}"


async def _completions(
    request: web.Request, kind: Literal["chat", "completion"]
) -> web.StreamResponse:
    backend = request.app[BACKEND]
    rid = request.headers.get("x-request-id") or f"req_{_hex_id()}"
    headers = {"x-request-id": rid}
    body = await request.read()
    try:
        adm = backend.admit(body, kind, request.headers.get(X_LPU_DEADLINE_MS))
    except Refused as r:
        backend.metrics.rejected.labels(r.reason).inc()
        return error_response(r.error, headers | r.headers)
    request.app[RECORDING].add(rid, adm.job, adm.schedule.artifact.slots,
                               request.headers.get(X_LPU_DEADLINE_MS))
    art = backend.artifact
    headers |= {
        X_LPU_PREDICTED_TTFT_MS: f"{adm.predicted_ttft_s * 1e3:.3f}",
        X_LPU_ARTIFACT: art.name,
        X_LPU_ARTIFACT_VERSION: art.version,
        X_LPU_SCHEDULE: adm.schedule_header,
    }
    ident = ResponseIdentity(
        kind=kind,
        id=("chatcmpl-" if kind == "chat" else "cmpl-") + _hex_id(),
        created=int(request.app[WALL_CLOCK]()),
        model=adm.model,
        system_fingerprint=backend.fingerprint,
        groq_id=rid if rid.startswith("req_") else f"req_{_hex_id()}",
    )
    deliverer = request.app[DELIVERER]
    outcome: Delivered | None = None
    gone = False
    try:
        if adm.req.stream:
            resp, outcome = await deliverer.stream(request, adm, ident, headers)
        else:
            # Its headers leave with the last token: the schedule is the one of that instant.
            del headers[X_LPU_SCHEDULE]
            resp, outcome = await deliverer.whole(request, adm, ident, headers,
                                                  backend.schedule_header)
        return resp
    except (asyncio.CancelledError, ConnectionResetError):
        gone = True
        raise
    finally:
        backend.end(adm, completed=outcome is Delivered.COMPLETED, client_gone=gone)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _completions(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _completions(request, "completion")


def _model_entries(backend: Backend, created: int) -> list[dict[str, object]]:
    art = backend.artifact
    return [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "lpu-emulator",
            "artifact": art.name,
            "version": art.version,
            "compiler_version": art.compiler_version,
            "precision": art.precision,
            "target": art.target,
            "digest": backend.digest,
            "max_seq_len": art.max_seq_len,
            "max_output_tokens": art.max_output_tokens,
            "slots": art.slots,
            "prefill_s": art.prefill_s,
            "per_token_s": art.per_token_s,
            "ready": backend.ready,
        }
        for name in backend.model_names()
    ]


async def list_models(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    data = _model_entries(backend, request.app[STARTED])
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    name = request.match_info["model"]
    for entry in _model_entries(backend, request.app[STARTED]):
        if entry["id"] == name:
            return web.json_response(entry)
    return error_response(model_not_found(name))


async def load(request: web.Request) -> web.Response:
    return web.json_response(request.app[BACKEND].load().to_mapping())


async def metrics(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    backend.refresh_metrics()
    body = generate_latest(backend.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    status = 200 if backend.ready else 503
    doc = {"ready": backend.ready, "artifact": backend.artifact.name}
    if backend.pending is not None:
        doc["pending_artifact"] = backend.pending.name
    return web.json_response(doc, status=status)


def create_app(
    options: EmulatorOptions,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The application of one emulated backend (its own engine and metric registry).

    ``clock``: monotonic seconds, the schedule's timeline (must advance with the
    event loop's sleeps). ``wall_clock``: Unix seconds for ``created`` fields.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    m = make_metrics(registry)
    backend = Backend(options, clock=clock, metrics=m)
    app[BACKEND] = backend
    app[DELIVERER] = Deliverer(
        clock=clock, tick_s=options.tick_s, write_budget_per_s=options.write_budget_per_s,
        text=TokenText(), metrics=m,
    )
    app[WALL_CLOCK] = wall_clock
    app[RECORDING] = ScheduleRecording(clock)
    app[STARTED] = int(wall_clock())

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        yield
        await backend.close()

    app.cleanup_ctx.append(lifetime)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/load", load)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    admin.add_routes(app)
    return app


@asynccontextmanager
async def start_emulators(
    options: EmulatorOptions, replicas: int = 1, host: str = "127.0.0.1", port: int = 0,
    *, clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[list[str]]:
    """Serve ``replicas`` independent backends in the running loop; yield their base URLs.

    Ports are ``port, port + 1, ...`` (ephemeral when ``port`` is 0). Replica
    ``i`` uses seed ``options.seed + i`` so their fault and length draws differ.
    URLs look like ``http://127.0.0.1:8001`` (no trailing slash, no ``/v1``).
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    try:
        for i in range(replicas):
            app = create_app(replace(options, seed=options.seed + i), clock=clock)
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            runners.append(runner)
            await runner.setup()
            # A backlog for hundreds of clients connecting at once (aiohttp's default, 128,
            # overflows at 500 streams starting together and their connections get reset).
            site = web.TCPSite(runner, host, port + i if port else 0, backlog=1024)
            await site.start()
            addr = runner.addresses[0]
            urls.append(f"http://{host}:{addr[1]}")
        yield urls
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
