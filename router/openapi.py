"""The router's OpenAPI 3.1 description, served at ``GET /openapi.json``.

Request bodies list the fields :func:`lpu_protocol.openai_api.parse_request` accepts (with the
types and ranges it checks; ``model`` is one of the configured public models; parameters beyond
OpenAI's as ``[server] extra_params`` allows them), responses list
every status the router answers with, the OpenAI error shape, the ``Retry-After`` and
``retry-after-ms`` headers of 429/503 refusals and the ``x-lpu-*`` headers of proxied answers.
The document is built once per app from its config (:func:`openapi_document`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lpu_protocol.headers import X_LPU_BUCKET, X_LPU_MAX_TOKENS
from lpu_protocol.openai_api import CHAT_ROLES, MAX_ALLOWANCE
from lpu_protocol.param_policy import ExtraParams, ParamPolicy
from router.config import RouterConfig

__all__ = ["openapi_document", "openapi_handler"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON_ERROR = {"application/json": {"schema": _ERROR}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": _JSON_ERROR}
    if headers:
        out["headers"] = headers
    return out


_RETRY_HEADERS = {
    "Retry-After": {"description": "Seconds to wait (integer, at least 1).",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "retry-after-ms": {"description": "Milliseconds to wait.",
                       "schema": {"type": "string", "pattern": "^[0-9]+$"}},
}
_PROXY_HEADERS = {
    "x-request-id": {"schema": {"type": "string"}},
    X_LPU_BUCKET: {"description": "The compiled shape that served the request.",
                     "schema": {"type": "string"}},
    X_LPU_MAX_TOKENS: {"description": "The output allowance forwarded.",
                         "schema": {"type": "string"}},
}


def _number(lo: float, hi: float) -> dict[str, Any]:
    return {"type": ["number", "null"], "minimum": lo, "maximum": hi}


def _common(models: list[str]) -> dict[str, Any]:
    allowance = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_ALLOWANCE}
    return {
        "model": {"type": "string", "enum": models},
        "max_tokens": allowance,
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"type": ["object", "null"],
                           "properties": {"include_usage": {"type": "boolean"}}},
        "temperature": _number(0.0, 2.0),
        "top_p": _number(0.0, 1.0),
        "presence_penalty": _number(-2.0, 2.0),
        "frequency_penalty": _number(-2.0, 2.0),
        "seed": {"type": ["integer", "null"]},
        "n": {"type": ["integer", "null"], "enum": [1, None]},
        "user": {"type": ["string", "null"]},
        "service_tier": {"type": ["string", "null"]},
    }


# vLLM's sampling extensions the parser checks (openai_api._vllm_params); the rest of an
# allow-list is documented as any value.
_EXTRA_TYPES: dict[str, dict[str, Any]] = {
    "ignore_eos": {"type": ["boolean", "null"]},
    "min_tokens": {"type": ["integer", "null"], "minimum": 0},
    "top_k": {"type": ["integer", "null"]},
    "min_p": _number(0.0, 1.0),
    "repetition_penalty": {"type": ["number", "null"], "exclusiveMinimum": 0},
}


def _with_extra(schema: dict[str, Any], params: ParamPolicy) -> dict[str, Any]:
    """``schema`` with the parameters beyond OpenAI's that ``params`` accepts."""
    if params.mode is ExtraParams.PASS:
        schema["additionalProperties"] = True
    elif params.mode is ExtraParams.ALLOW:
        props = schema["properties"]
        for name in sorted(params.allow - set(props)):
            props[name] = _EXTRA_TYPES.get(name, {})
    return schema


def _chat_request(models: list[str]) -> dict[str, Any]:
    props = _common(models)
    props["max_completion_tokens"] = props["max_tokens"]
    props["messages"] = {
        "type": "array", "minItems": 1,
        "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {
                "role": {"type": "string", "enum": sorted(CHAT_ROLES)},
                "content": {"type": "string"},
                "name": {"type": "string"},
            },
        },
    }
    return {"type": "object", "required": ["model", "messages"], "properties": props,
            "additionalProperties": False}


def _completion_request(models: list[str]) -> dict[str, Any]:
    props = _common(models)
    props["prompt"] = {"type": "string"}
    props["echo"] = {"type": ["boolean", "null"]}
    props["best_of"] = {"type": ["integer", "null"], "enum": [1, None]}
    return {"type": "object", "required": ["model", "prompt"], "properties": props,
            "additionalProperties": False}


def _completion_op(summary: str, schema: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [{"name": "x-priority", "in": "header", "required": False,
                        "schema": {"type": "string",
                                   "enum": ["interactive", "standard", "batch"]}}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}},
        "responses": {
            "200": {"description": "The backend's answer, relayed (JSON, or SSE when"
                    " stream is true).", "headers": _PROXY_HEADERS,
                    "content": {"application/json": {"schema": {"type": "object"}},
                                # Chunk objects, then the literal [DONE]: any event.
                                "text/event-stream": {"schema": {}}}},
            "400": _error("Invalid request (JSON, types, ranges, context length)."),
            "401": _error("Missing or wrong API key (when keys are configured)."),
            "404": _error("Unknown model."),
            "408": _error("The body did not arrive within server.body_timeout_s."),
            "413": _error("Body over server.max_body_bytes."),
            "429": _error("Refused by admission control (SLO, capacity, tenant limits).",
                          _RETRY_HEADERS),
            "502": _error("The backend failed."),
            "503": _error("No backend, or the router is shutting down.", _RETRY_HEADERS),
            "504": _error("The backend timed out."),
        },
    }


def _get(summary: str, schema: dict[str, Any], *, admin: bool = False,
         content_type: str = "application/json", extra: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": summary,
                                         "content": {content_type: {"schema": schema}}}}
    if admin:
        responses["401"] = _error("Needs the admin API key.")
        responses["403"] = _error("A tenant's key: the endpoint needs the admin API key.")
    responses.update(extra or {})
    return {"get": {"summary": summary, "responses": responses}}


def openapi_document(config: RouterConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a router serving ``config``."""
    models = list(config.models)
    ready = {"type": "object", "required": ["ready"],
             "properties": {"ready": {"type": "boolean"}}}
    error = {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]},
                           "code": {"type": ["string", "null"]}}}},
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "lpu-router", "version": "0.1.0",
                 "description": "OpenAI-compatible admission-control router."},
        "paths": {
            "/v1/chat/completions": {"post": _completion_op("Chat completion", "ChatRequest")},
            "/v1/completions": {"post": _completion_op("Legacy completion",
                                                       "CompletionRequest")},
            "/v1/models": _get("Public models", {"type": "object",
                                                 "required": ["object", "data"]},
                               extra={"401": _error("Missing or wrong API key.")}),
            "/metrics": _get("Prometheus metrics", {"type": "string"},
                             content_type="text/plain"),
            "/healthz": _get("Alive", {"type": "object"}),
            "/health": _get("Alive (the name vLLM and load tools such as guidellm use)",
                            {"type": "object"}),
            "/readyz": _get("Ready", ready, extra={"503": {
                "description": "Not ready (draining, or a bucket without a backend up).",
                "content": {"application/json": {"schema": ready}}}}),
            "/admin/backends": _get("Backend health", {"type": "object"}, admin=True),
            "/openapi.json": _get("This document", {"type": "object"}),
        },
        "components": {"schemas": {
            "Error": error,
            "ChatRequest": _with_extra(_chat_request(models), config.server.params),
            "CompletionRequest": _with_extra(_completion_request(models),
                                             config.server.params),
        }},
    }
    if config.auth_enabled or config.server.admin_key_digest is not None:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def openapi_handler(config: RouterConfig) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /openapi.json`` for ``config`` (the document is built once)."""
    body = json.dumps(openapi_document(config), separators=(",", ":")).encode()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return handler
