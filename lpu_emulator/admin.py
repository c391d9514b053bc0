"""Operations endpoints: fault injection and artifact swap, changed at runtime.

* ``GET /admin/faults``: the fault settings in force.
* ``POST /admin/faults`` with a JSON object of
  :class:`~lpu_emulator.faults.FaultSettings` fields: replace those keys
  (others keep their value), answer the new settings. ``{}`` changes nothing;
  ``{"error_rate": 0, "stall_rate": 0, "crash_rate": 0, "garbage_rate": 0,
  "stream_error_rate": 0}`` turns everything off.
* ``GET /admin/schedule``: what was scheduled per request (:mod:`lpu_emulator.recording`).
* ``GET /admin/artifact``: the served artifact (durations scaled) and any pending one.
* ``POST /admin/artifact`` with ``{"artifact": "<built-in name or TOML path>"}``
  or ``{"toml": "<artifact TOML text>"}``: 202 and the swap starts (not ready for
  the compile time, see :meth:`lpu_emulator.backend.Backend.swap`); 409 while
  another swap runs.

These endpoints are unauthenticated (the emulator is a test fixture): bind the
emulator to a private address.
"""

from __future__ import annotations

import tomllib
from typing import Any

from aiohttp import web

from lpu_emulator.keys import BACKEND
from lpu_emulator.recording import get_schedule
from lpu_protocol.artifact import Artifact, ArtifactError, load_artifact, parse_artifact
from lpu_protocol.openai_api import APIError, json_object

__all__ = ["add_routes"]


def _error(err: APIError) -> web.Response:
    return web.Response(
        status=err.status, body=err.to_json(), content_type="application/json"
    )


async def _json_object(request: web.Request) -> dict[str, Any]:
    return json_object(await request.read())


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[BACKEND].faults.to_dict())


async def post_faults(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    try:
        doc = await _json_object(request)
        backend.faults = backend.faults.updated(doc)
    except APIError as exc:
        return _error(exc)
    except ValueError as exc:
        return _error(APIError(400, str(exc), code="invalid_value"))
    return web.json_response(backend.faults.to_dict())


def _artifact_from(doc: dict[str, Any]) -> Artifact:
    spec, text = doc.get("artifact"), doc.get("toml")
    if isinstance(text, str):
        return parse_artifact(tomllib.loads(text), source="<posted toml>")
    if isinstance(spec, str) and spec:
        return load_artifact(spec)
    raise APIError(
        400, "Expected {\"artifact\": \"<built-in name or path>\"} or {\"toml\": \"...\"}.",
        param="artifact", code="invalid_value",
    )


async def get_artifact(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    return web.json_response({
        "artifact": backend.artifact.to_dict(),
        "time_scale": backend.options.time_scale,
        "ready": backend.ready,
        "pending": backend.pending.to_dict() if backend.pending is not None else None,
    })


async def post_artifact(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    try:
        artifact = _artifact_from(await _json_object(request))
        ready_in = backend.swap(artifact)
    except APIError as exc:
        return _error(exc)
    except (ArtifactError, tomllib.TOMLDecodeError) as exc:
        return _error(APIError(400, str(exc), param="artifact", code="invalid_artifact"))
    return web.json_response(
        {"artifact": artifact.name, "version": artifact.version, "compile_s": ready_in,
         "ready": backend.ready},
        status=202,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/faults", get_faults)
    app.router.add_post("/admin/faults", post_faults)
    app.router.add_get("/admin/artifact", get_artifact)
    app.router.add_post("/admin/artifact", post_artifact)
    app.router.add_get("/admin/schedule", get_schedule)
