"""``GET /admin/buckets``: the admission controller's state, as JSON, for operators.

With admission ``timeline`` the body is
:meth:`~router.admission.controller.TimelineAdmitter.snapshot`: per bucket its utilization,
target, headroom, queue, limits, counts and learned output length, and per replica its slot
free-in times, reserved / running / queued requests, predicted wait and TTFT now, and its last
``/load`` report. With ``off`` it is the in-flight count per bucket.

Access: open while no API key is configured at all; otherwise the admin key
(``server.admin_api_key``) only -- 401 ``invalid_api_key`` without a valid key, 403
``permission_denied`` for a valid tenant key that is not the admin key (OpenAI's error shape;
:meth:`router.auth.Auth.check_admin`, as for ``/admin/backends``).
"""

from __future__ import annotations

import json

from aiohttp import web

from router.admission import Admitter
from router.auth import Auth

__all__ = ["AdminBuckets"]


class AdminBuckets:
    """The ``/admin/buckets`` handler."""

    def __init__(self, *, auth: Auth, admitter: Admitter) -> None:
        self._auth = auth
        self._admitter = admitter

    async def buckets(self, request: web.Request) -> web.Response:
        self._auth.check_admin(request.headers)
        body = json.dumps(self._admitter.snapshot(), default=str).encode()
        return web.Response(body=body, content_type="application/json")
