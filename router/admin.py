"""``GET /admin/buckets``: the admission controller's state, as JSON, for operators.

With admission ``timeline`` the body is
:meth:`~router.admission.controller.TimelineAdmitter.snapshot`: per bucket its utilization,
target, headroom, queue, limits, counts and learned output length, and per replica its slot
free-in times, reserved / running / queued requests, predicted wait and TTFT now, and its last
``/load`` report. With ``off`` it is the in-flight count per bucket. Its ``worker`` field
(``index``, ``pid``, ``workers``) and the ``x-lpu-worker`` header say which worker process
answered: with ``server.workers`` > 1 each worker has its own admission state, and this is one
worker's view (:mod:`router.worker_id`).

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
from router.worker_id import WORKER_HEADER, WorkerId

__all__ = ["AdminBuckets"]


class AdminBuckets:
    """The ``/admin/buckets`` handler."""

    def __init__(self, *, auth: Auth, admitter: Admitter, worker: WorkerId) -> None:
        self._auth = auth
        self._admitter = admitter
        self._worker = worker

    async def buckets(self, request: web.Request) -> web.Response:
        self._auth.check_admin(request.headers)
        data = {**self._admitter.snapshot(), "worker": self._worker.as_json()}
        body = json.dumps(data, default=str).encode()
        return web.Response(body=body, content_type="application/json",
                            headers={WORKER_HEADER: self._worker.header})
