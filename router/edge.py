"""The edge middleware: request ids, OpenAI-shaped errors for everything, route counts.

* ``x-request-id``: the client's own (when it is 1-128 visible ASCII characters) or a new
  ``req_<32 hex>`` (16 random hex digits drawn once per process, then a 16-digit counter:
  unique without a system call per request); set on every response, errors included (a
  streaming handler sets it itself before ``prepare``).
* aiohttp's own HTTP errors (404 unknown path, 405, 413 body over ``server.max_body_bytes``)
  become OpenAI error bodies; an unexpected exception becomes a 500 in the same shape (and is
  logged with its traceback).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from lpu_protocol.openai_api import APIError
from router.errors import Rejection, error_response
from router.metrics import RouterMetrics
from router.series import Children

__all__ = ["REQUEST_ID", "edge_middleware"]

REQUEST_ID = web.RequestKey("request_id", str)

log = logging.getLogger("lpu_router.edge")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_ID_PREFIX = "req_" + os.urandom(8).hex()
_ids = itertools.count(int.from_bytes(os.urandom(4), "big"))


def _request_id(given: str | None) -> str:
    if given and len(given) <= 128 and given.isascii() and given.isprintable() \
            and " " not in given:
        return given
    return f"{_ID_PREFIX}{next(_ids) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def _http_error(exc: web.HTTPException, max_body: int) -> APIError:
    if exc.status == 413:
        return APIError(413, f"Request body too large: the limit is {max_body} bytes.",
                        code="request_too_large")
    if exc.status == 404:
        return APIError(404, "Unknown request URL. Please check the URL and method.",
                        code="unknown_url")
    if exc.status == 405:
        return APIError(405, "Method not allowed for this URL.", code="method_not_allowed")
    return APIError(exc.status, exc.reason, code=None)


def edge_middleware(metrics: RouterMetrics, max_body: int) -> Callable[..., Awaitable[
        web.StreamResponse]]:
    received = Children(metrics.requests_received)

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = _request_id(request.headers.get("x-request-id"))
        request[REQUEST_ID] = rid
        route = request.match_info.route.resource
        received(route.canonical if route is not None else "other").inc()
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = error_response(_http_error(exc, max_body))
        except Rejection as exc:
            resp = error_response(exc.error, exc.headers)
        except APIError as exc:
            resp = error_response(exc)
        except ConnectionResetError:
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            resp = error_response(APIError(500, "The router failed to handle the request.",
                                           type="server_error", code="internal_error"))
        if not resp.prepared:
            resp.headers["x-request-id"] = rid
        return resp

    return edge
