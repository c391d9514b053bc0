"""The small endpoints: ``/v1/models``, ``/metrics``, ``/healthz``, ``/health``, ``/readyz``,
``/admin``.

* ``GET /v1/models``: the router's public models (OpenAI list shape), with each model's buckets
  (name, ``max_seq_len``, ``max_output_tokens``) as an extension field.
* ``GET /healthz`` and ``GET /health`` (the name vLLM uses, which load tools such as guidellm
  probe): 200 while the process serves, draining included (``/readyz`` says whether to send).
* ``GET /readyz``: 200 when not shutting down and every bucket has a backend up, else 503; the
  body gives the backends up per bucket.
* ``GET /admin/backends``: every replica's health state, the artifact identity it last reported
  on ``/load`` (``identity``: :class:`router.identity.ReplicaIdentity`, null before one) and
  why its shape does not fit its bucket (``shape_mismatch``, null when it fits), and the timings
  the router observes on its streams (``observed``: ``prefill_s``, ``per_token_s``, the
  medians of :mod:`router.drift`; null before a sample) beside the declared ones; needs the
  admin key when any API key is configured (401 without a valid key, 403 for a tenant's key,
  as ``/admin/buckets``). Its ``worker`` field and ``x-lpu-worker`` header say which worker
  process answered (each has its own health state: one worker's view).
* ``GET /metrics``: the Prometheus text; with worker processes, the whole pod's
  (:meth:`router.metrics.RouterMetrics.exposition`).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from router.auth import Auth
from router.config import RouterConfig
from router.drift import DriftEstimator, Timing
from router.metrics import RouterMetrics
from router.pool import BackendPool
from router.worker_id import WORKER_HEADER, WorkerId

__all__ = ["Endpoints"]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(),
                        content_type="application/json", headers=headers)


class Endpoints:
    def __init__(self, config: RouterConfig, *, pool: BackendPool, metrics: RouterMetrics,
                 auth: Auth, created: int, worker: WorkerId,
                 drift: DriftEstimator | None = None) -> None:
        self._config = config
        self._drift = drift
        self._worker = worker
        self._pool = pool
        self._metrics = metrics
        self._auth = auth
        self._created = created
        self.shutting_down = False

    async def models(self, request: web.Request) -> web.Response:
        self._auth.tenant(request.headers)
        data = [
            {
                "id": model,
                "object": "model",
                "created": self._created,
                "owned_by": "lpu-router",
                "buckets": [
                    {"name": b.name, "max_seq_len": b.max_seq_len,
                     "max_output_tokens": b.max_output_tokens}
                    for b in self._config.buckets if b.model == model
                ],
            }
            for model in self._config.models
        ]
        return _json({"object": "list", "data": data})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        up = self._pool.ready()
        ready = not self.shutting_down and all(up.values())
        return _json({"ready": ready, "shutting_down": self.shutting_down, "backends_up": up},
                     200 if ready else 503)

    async def backends(self, request: web.Request) -> web.Response:
        self._auth.check_admin(request.headers)
        rows = [
            {"bucket": r.bucket, "url": r.url, "up": r.up, "probe_ok": r.probe_ok,
             "consecutive_failures": r.failures,
             "identity": None if r.identity is None else r.identity.as_json(),
             "shape_mismatch": r.mismatch,
             "observed": self._observed(r.bucket, r.url)}
            for b in self._config.buckets for r in self._pool.replicas(b.name)
        ]
        return _json({"backends": rows, "worker": self._worker.as_json()},
                     headers={WORKER_HEADER: self._worker.header})

    def _observed(self, bucket: str, url: str) -> dict[str, float | None]:
        """The router's own reading of the replica's timings (router.drift), seconds."""
        d = self._drift
        return {f"{t.value}_s": None if d is None else d.observed(bucket, url, t) for t in Timing}
