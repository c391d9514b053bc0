"""The edge of every route: request ids, OpenAI-shaped errors for everything, route counts.

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

__all__ = ["REQUEST_ID", "Edge"]

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


def _http_error(status: int, reason: str, max_body: int) -> APIError:
    if status == 413:
        return APIError(413, f"Request body too large: the limit is {max_body} bytes.",
                        code="request_too_large")
    if status == 404:
        return APIError(404, "Unknown request URL. Please check the URL and method.",
                        code="unknown_url")
    if status == 405:
        return APIError(405, "Method not allowed for this URL.", code="method_not_allowed")
    return APIError(status, reason, code=None)


class Edge:
    """What every route gets, as a wrapper of its handler (no middleware: aiohttp then runs
    no middleware chain for any request): the request id, the route's request count, and
    every error as an OpenAI error. :meth:`unrouted` answers what no route matches."""

    def __init__(self, metrics: RouterMetrics, max_body: int) -> None:
        self._received = Children(metrics.requests_received)
        self._max_body = max_body
        self._paths: set[str] = set()

    def wrap(self, path: str, handler: Handler) -> Handler:
        """``handler`` of the route ``path``, behind the edge."""
        self._paths.add(path)
        count = self._received(path)
        max_body = self._max_body

        async def edge(request: web.Request) -> web.StreamResponse:
            rid = _request_id(request.headers.get("x-request-id"))
            request[REQUEST_ID] = rid
            count.inc()
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                resp = error_response(_http_error(exc.status, exc.reason, max_body))
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

    async def unrouted(self, request: web.Request) -> web.StreamResponse:
        """The catch-all route: 405 on a known path (another method), else 404."""
        self._received("other").inc()
        status = 405 if request.path in self._paths else 404
        resp = error_response(_http_error(status, "", self._max_body))
        resp.headers["x-request-id"] = _request_id(request.headers.get("x-request-id"))
        return resp
