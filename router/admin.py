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
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from router.admission.controller import TimelineAdmitter
from router.admission.off import OffAdmitter
from router.auth import Auth

__all__ = ["AdminBuckets"]


class AdminBuckets:
    """The ``/admin/buckets`` handler."""

    def __init__(self, *, auth: Auth, admitter: OffAdmitter | TimelineAdmitter,
                 buckets: Sequence[str]) -> None:
        self._auth = auth
        self._admitter = admitter
        self._buckets = tuple(buckets)

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able data (see the module docstring)."""
        a = self._admitter
        if isinstance(a, TimelineAdmitter):
            return a.snapshot()
        return {"mode": "off", "buckets": {b: {"in_flight": a.in_flight(b)}
                                           for b in self._buckets}}

    async def buckets(self, request: web.Request) -> web.Response:
        self._auth.check_admin(request.headers)
        body = json.dumps(self.snapshot(), default=str).encode()
        return web.Response(body=body, content_type="application/json")
