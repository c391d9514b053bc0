"""``GET /admin/buckets``: the admission controller's state, as JSON, for operators.

With admission ``timeline`` the body is
:meth:`~router.admission.controller.TimelineAdmitter.snapshot`: per bucket its utilization,
target, headroom, queue, limits, counts and learned output length, and per replica its slot
free-in times, reserved / running / queued requests, predicted wait and TTFT now, and its last
``/load`` report. With ``off`` it is the in-flight count per bucket. Its ``worker`` field
(``index``, ``pid``, ``workers``) and the ``x-lpu-worker`` header say which worker process
answered: with ``server.workers`` > 1 each worker has its own admission state, and this is one
worker's view (:mod:`router.worker_id`).

``POST /admin/buckets/{name}/canary/clear`` starts a fresh comparison of a bucket's canary (after
a rollback: traffic goes to it again); ``POST /admin/buckets/{name}/canary/promote`` makes the
canary version the bucket's stable version and ends the split (:mod:`router.canary`). Both answer
the bucket's canary state; 404 ``bucket_not_found`` for a bucket without canary state, 409
``no_canary`` for a promotion without a canary. With workers, each call reaches one worker.

``POST /admin/buckets/{name}/rollout`` with the target artifact (``{"artifact": ...}`` or
``{"toml": ...}``) starts the bucket's rolling swap (:mod:`router.rollout`): 202 and its progress,
which ``GET /admin/buckets`` then shows as the bucket's ``rollout``; 404 ``bucket_not_found``,
400 ``invalid_artifact`` / ``invalid_value``, 409 ``rollout_in_progress``. With workers the
outcome of a canary call is pod-wide and a rollout runs in the worker the call reached, every
worker showing its progress (:mod:`router.canary_shared`).

Access: open while no API key is configured at all; otherwise the admin key
(``server.admin_api_key``) only -- 401 ``invalid_api_key`` without a valid key, 403
``permission_denied`` for a valid tenant key that is not the admin key (OpenAI's error shape;
:meth:`router.auth.Auth.check_admin`, as for ``/admin/backends``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from lpu_protocol.openai_api import APIError, json_object
from router.admission import Admitter
from router.auth import Auth
from router.canary import Canary
from router.canary_shared import PodState
from router.rollout import RolloutError, Rollouts
from router.worker_id import WORKER_HEADER, WorkerId

__all__ = ["AdminBuckets"]


class AdminBuckets:
    """The ``/admin/buckets`` handler."""

    def __init__(self, *, auth: Auth, admitter: Admitter, worker: WorkerId,
                 canaries: Mapping[str, Canary] | None = None,
                 rollouts: Rollouts | None = None, pod: PodState | None = None) -> None:
        """``pod``: with workers, the pod's shared canary and rollout state (a rollout runs in
        one worker; the others show its progress)."""
        self._pod = pod
        self._auth = auth
        self._admitter = admitter
        self._worker = worker
        self._canaries = dict(canaries or {})
        self._rollouts = rollouts

    async def buckets(self, request: web.Request) -> web.Response:
        self._auth.check_admin(request.headers)
        data = {**self._admitter.snapshot(), "worker": self._worker.as_json()}
        shown = self._pod.rollouts() if self._pod is not None else {}
        if self._rollouts is not None:
            shown |= self._rollouts.snapshot()  # this worker's own: the freshest
        if shown:
            for name, progress in shown.items():
                bucket = data.get("buckets", {}).get(name)
                if isinstance(bucket, dict):
                    bucket["rollout"] = progress
        body = json.dumps(data, default=str).encode()
        return web.Response(body=body, content_type="application/json",
                            headers={WORKER_HEADER: self._worker.header})

    def _canary(self, request: web.Request) -> Canary:
        self._auth.check_admin(request.headers)
        name = request.match_info["name"]
        canary = self._canaries.get(name)
        if canary is None:
            raise APIError(404, f"Bucket '{name}' has no canary state (no stable_version or"
                           " [buckets.canary] in its config).", code="bucket_not_found")
        return canary

    def _answer(self, canary: Canary) -> web.Response:
        body = json.dumps({"bucket": canary.bucket, **canary.as_json(),
                           "worker": self._worker.as_json()}).encode()
        return web.Response(body=body, content_type="application/json",
                            headers={WORKER_HEADER: self._worker.header})

    async def canary_clear(self, request: web.Request) -> web.Response:
        canary = self._canary(request)
        canary.clear()
        return self._answer(canary)

    async def canary_promote(self, request: web.Request) -> web.Response:
        canary = self._canary(request)
        try:
            canary.promote()
        except ValueError as exc:
            raise APIError(409, str(exc), code="no_canary") from exc
        return self._answer(canary)

    async def rollout(self, request: web.Request) -> web.Response:
        self._auth.check_admin(request.headers)
        if self._rollouts is None:
            raise APIError(409, "Rolling swaps need admission mode 'timeline'.",
                           code="rollout_unavailable")
        doc = json_object(await request.read())
        name = request.match_info["name"]
        try:
            if self._pod is not None:
                self._pod.claim_rollout(name)  # one worker of the pod runs it
            try:
                progress = self._rollouts.start(name, doc)
            except RolloutError:
                if self._pod is not None:
                    self._pod.release_rollout(name)
                raise
        except RolloutError as exc:
            raise APIError(exc.status, str(exc), code=exc.code) from exc
        body = json.dumps({"bucket": request.match_info["name"], **progress.as_json(),
                           "worker": self._worker.as_json()}).encode()
        return web.Response(status=202, body=body, content_type="application/json",
                            headers={WORKER_HEADER: self._worker.header})
