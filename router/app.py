"""The composition root: :func:`build_app` builds the whole router from a config object.

Reading this one function tells what exists and who talks to whom:

* the metric catalog (on the injected registry) and the token counter;
* the bucket table (shapes by model) and the admitter (``off`` or the timeline controller);
* the backend pool (health), which tells the admitter when a replica goes up or down;
* the upstream client (one ``ClientSession``, opened and closed by ``cleanup_ctx``, with
  ``TCPConnector(limit=0)`` so the admitter is the only queue, and a keep-alive shorter than
  the backends'), and the health-probe task;
* the routes, behind the edge middleware (request ids, error shapes, body limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from router.admission import Admitter
from router.admission.off import OffAdmitter
from router.admission.settings import AdmissionMode, AdmissionSettings
from router.auth import Auth
from router.buckets import BucketTable
from router.config import RouterConfig
from router.edge import edge_middleware
from router.endpoints import Endpoints
from router.handlers import Proxy
from router.metrics import RouterMetrics, make_metrics
from router.pool import BackendPool
from router.relay import Upstream
from router.tokens import ESTIMATE_UNDERCOUNT_MARGIN, EstimateCounter, HFTokenizerCounter

__all__ = ["ADMITTER", "METRICS", "POOL", "build_app", "make_admitter"]

log = logging.getLogger("lpu_router.app")

METRICS = web.AppKey("metrics", RouterMetrics)
POOL = web.AppKey("pool", BackendPool)
ADMITTER = web.AppKey("admitter", object)


def make_admitter(settings: AdmissionSettings, *, clock: Callable[[], float],
                  metrics: RouterMetrics) -> Admitter:
    """``off`` -> :class:`OffAdmitter`; ``timeline`` -> the timeline controller."""
    if settings.mode is AdmissionMode.TIMELINE:
        try:
            from router.admission.controller import TimelineAdmitter
        except ImportError:
            # TODO(lead): remove this fallback once router/admission/controller.py lands.
            log.warning("admission mode 'timeline' requested but router.admission.controller"
                        " is not available: falling back to mode 'off'")
        else:
            admitter: Admitter = TimelineAdmitter(settings, clock=clock, metrics=metrics)
            return admitter
    return OffAdmitter(settings)


def build_app(config: RouterConfig, *, clock: Callable[[], float] = time.monotonic,
              registry: CollectorRegistry | None = None) -> web.Application:
    """The router as an aiohttp application (serve it with ``handler_cancellation=True``)."""
    metrics = make_metrics(registry)
    counter = (HFTokenizerCounter(config.server.tokenizer) if config.server.tokenizer
               else EstimateCounter())
    margin = ESTIMATE_UNDERCOUNT_MARGIN if isinstance(counter, EstimateCounter) else 0.0
    table = BucketTable(config.buckets, margin=margin)
    admitter = make_admitter(config.admission, clock=clock, metrics=metrics)
    pool = BackendPool(config.buckets, config.health, clock=clock, metrics=metrics,
                       on_change=admitter.set_backend_health)
    upstream = Upstream(config.timeouts)
    auth = Auth(config)
    proxy = Proxy(config, table=table, counter=counter, admitter=admitter, pool=pool,
                  upstream=upstream, auth=auth, metrics=metrics, clock=clock)
    endpoints = Endpoints(config, pool=pool, metrics=metrics, auth=auth,
                          created=int(time.time()))

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=config.timeouts.keepalive_s)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            upstream.session = session
            probes = asyncio.create_task(pool.run(session), name="lpu-router-health")
            yield
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
            upstream.session = None

    async def mark_not_ready(app: web.Application) -> None:
        endpoints.shutting_down = True

    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[edge_middleware(metrics, config.server.max_body_bytes)],
    )
    app[METRICS] = metrics
    app[POOL] = pool
    app[ADMITTER] = admitter
    app.cleanup_ctx.append(client_session)
    app.on_shutdown.append(mark_not_ready)
    app.add_routes([
        web.post("/v1/chat/completions", proxy.chat),
        web.post("/v1/completions", proxy.completions),
        web.get("/v1/models", endpoints.models),
        web.get("/metrics", endpoints.metrics),
        web.get("/healthz", endpoints.healthz),
        web.get("/readyz", endpoints.readyz),
        web.get("/admin/backends", endpoints.backends),
    ])
    return app
