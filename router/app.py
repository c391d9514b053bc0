"""The composition root: :func:`build_app` builds the whole router from a config object.

Reading this one function tells what exists and who talks to whom:

* the metric catalog (on the injected registry) and the token counter;
* the bucket table (shapes by model) and the admitter (``off`` or the timeline controller);
* with ``[limits] store = "redis"``, the shared limits (:mod:`router.limits`: tenant windows and
  pod-wide bucket caps in Redis, its pool opened and closed by ``cleanup_ctx``), asked by the
  attempt loop after the local decision; the admitter then counts no tenant;
* the backend pool (health), which tells the admitter when a replica goes up or down;
* the upstream client (one ``ClientSession``, opened and closed by ``cleanup_ctx``, with
  ``TCPConnector(limit=0)`` so the admitter is the only queue, and a keep-alive shorter than
  the backends'), and the active-check task (:mod:`router.load_poller`: every backend checked
  on the path :mod:`router.probe` finds for it, feeding the pool's health and, with
  ``timeline``, the timeline);
* the loop-load task (:mod:`router.loop_load`: the worker's event loop busy share and lag, the
  saturation the HPA scales on), started and stopped by ``cleanup_ctx``;
* the request path: the completion handlers (:mod:`router.handlers`), the attempt loop
  (:mod:`router.attempts`) and the completion guard (:mod:`router.lifecycle`: drain, bodies);
* the routes, each behind the edge (:class:`router.edge.Edge`: request ids, error shapes,
  route counts; a wrapper, not a middleware, so no request pays for a middleware chain), and
  a last catch-all route answering 404 / 405 in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from lpu_protocol.tokens import ESTIMATE_UNDERCOUNT_MARGIN, EstimateCounter, HFTokenizerCounter
from router.admin import AdminBuckets
from router.admission import Health
from router.admission.controller import TimelineAdmitter
from router.admission.off import OffAdmitter
from router.admission.settings import AdmissionMode, AdmissionSettings
from router.attempts import AttemptLoop
from router.auth import Auth
from router.body_memory import BodyBudget
from router.body_rate import LargeBodyRate
from router.buckets import BucketTable
from router.canary import Canary, make_canaries
from router.canary_shared import PodState, state_file
from router.config import RouterConfig
from router.drift import DriftEstimator
from router.edge import Edge
from router.endpoints import Endpoints
from router.handlers import Proxy
from router.lifecycle import LIFECYCLE, Lifecycle, close_when_leaving, completion_guard
from router.limits.shared import SharedRateLimits, shared_limits
from router.load_poller import LoadPoller
from router.loop_load import LoopLoad
from router.metrics import RouterMetrics, make_metrics
from router.openapi import openapi_handler
from router.pool import BackendPool
from router.probe import Prober
from router.process import trim_heap
from router.relay import Upstream
from router.rollout import Rollouts
from router.series import RequestSeries
from router.worker_id import WorkerId

__all__ = ["ADMITTER", "METRICS", "POOL", "UPSTREAM", "build_app", "make_admitter"]

METRICS = web.AppKey("metrics", RouterMetrics)
POOL = web.AppKey("pool", BackendPool)
ADMITTER = web.AppKey("admitter", object)
UPSTREAM = web.AppKey("upstream", Upstream)


def make_admitter(settings: AdmissionSettings, *, clock: Callable[[], float],
                  metrics: RouterMetrics, health: Health,
                  canaries: Mapping[str, Canary] | None = None
                  ) -> OffAdmitter | TimelineAdmitter:
    """``off`` -> :class:`OffAdmitter`; ``timeline`` -> :class:`TimelineAdmitter`; both read
    each replica's health from ``health`` (the backend pool). ``canaries`` (per bucket) split
    the timeline's traffic by version; ``off`` has none."""
    if settings.mode is AdmissionMode.TIMELINE:
        return TimelineAdmitter(settings, clock=clock, metrics=metrics, health=health,
                                canaries=canaries)
    return OffAdmitter(settings, health)


def build_app(config: RouterConfig, *, clock: Callable[[], float] = time.monotonic,
              registry: CollectorRegistry | None = None, metrics: RouterMetrics | None = None,
              worker: WorkerId | None = None) -> web.Application:
    """The router as an aiohttp application (serve it with ``handler_cancellation=True``).

    ``metrics``: a catalog to use instead of a new one on ``registry`` (a worker process keeps
    one for its lifetime: its series live in a shared file, and two generations' counters for
    the same series would overwrite each other's counts). ``worker``: which worker this is
    (``/admin/*`` says so); default worker 0 of 1, this process."""
    metrics = make_metrics(registry) if metrics is None else metrics
    worker = WorkerId.here() if worker is None else worker
    counter = (HFTokenizerCounter(config.server.tokenizer) if config.server.tokenizer
               else EstimateCounter())
    margin = ESTIMATE_UNDERCOUNT_MARGIN if isinstance(counter, EstimateCounter) else 0.0
    table = BucketTable(config.buckets, margin=margin)
    pool = BackendPool(config.buckets, config.health, clock=clock, metrics=metrics)
    # [limits] store = "redis": tenant limits and bucket caps counted once for every process
    # that shares the server (router.limits); the local admitter then counts no tenant.
    limits = shared_limits(config.limits, config.admission, metrics=metrics, clock=clock)
    local = config.admission if limits is None else dataclasses.replace(config.admission,
                                                                         tenants=())
    canaries = make_canaries(config.buckets, metrics)
    admitter = make_admitter(local, clock=clock, metrics=metrics, health=pool.replica,
                             canaries=canaries)
    timeline = admitter if isinstance(admitter, TimelineAdmitter) else None
    poller = LoadPoller(pool, timeline, prober=Prober(config.health, clock=clock), clock=clock,
                        interval_s=config.health.interval_s,
                        load_interval_s=config.admission.load_poll_interval_s)
    upstream = Upstream(config.timeouts)
    auth = Auth(config)
    for b in config.buckets:  # one count of the requests in flight: the admitter's tickets
        for url in b.backends:
            metrics.in_flight.labels(b.name, url).set_function(
                partial(admitter.in_flight, b.name, url))
    series = RequestSeries(metrics)
    drift = DriftEstimator(metrics, tolerance=config.admission.drift_tolerance,
                           on_estimate=None if timeline is None else timeline.observe_timing)
    attempts = AttemptLoop(admitter=admitter, pool=pool, upstream=upstream, metrics=metrics,
                           series=series, max_retries=config.server.max_retries,
                           min_retry_after_s=config.admission.min_retry_after_s,
                           upstream_model={b.name: b.upstream_model for b in config.buckets},
                           clock=clock, limits=limits, buckets={b.name: b for b in config.buckets},
                           drift=drift)
    proxy = Proxy(config, table=table, counter=counter,
                  admitter=admitter if limits is None else SharedRateLimits(admitter, limits),
                  attempts=attempts, auth=auth, series=series, clock=clock)
    rollouts = None if timeline is None else Rollouts(
        {b.name: b.backends for b in config.buckets}, timeline,
        session=lambda: upstream.session, canaries=canaries, metrics=metrics, clock=clock,
        poll_s=min(0.05, config.admission.load_poll_interval_s))
    # With workers: a canary's rollback, clear and promotion are pod-wide, a rollout runs in
    # one worker (router.canary_shared; the file beside the metrics' multiprocess files).
    pod = None if metrics.multiprocess_dir is None else PodState(
        state_file(metrics.multiprocess_dir, os.getppid()), worker, canaries, rollouts)
    admin = AdminBuckets(auth=auth, admitter=admitter, worker=worker, canaries=canaries,
                         rollouts=rollouts, pod=pod)
    endpoints = Endpoints(config, pool=pool, metrics=metrics, auth=auth, drift=drift,
                          created=int(time.time()), worker=worker)

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=config.timeouts.keepalive_s)
        # No cookie jar: one session serves every client, so a backend's Set-Cookie must not
        # be kept and sent along with other clients' requests (and a jar costs per request).
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            upstream.session = session
            upstream.start()
            probes = asyncio.create_task(poller.run(session), name="lpu-router-health")
            yield
            if rollouts is not None:
                await rollouts.close()
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
            upstream.stop()
            upstream.session = None

    # The worker's own saturation (busy share, lag): what the HPA scales on (docs/deploy.md).
    loop_load = LoopLoad(metrics.loop_busy_seconds, metrics.loop_lag_seconds,
                         metrics.event_loops)

    async def share_pod_state(app: web.Application) -> AsyncIterator[None]:
        task = None if pod is None else asyncio.create_task(pod.run(),
                                                            name="lpu-router-pod-state")
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def sample_loop(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop_load.run(), name="lpu-router-loop-load")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def not_ready() -> None:
        endpoints.shutting_down = True

    async def mark_not_ready(app: web.Application) -> None:
        not_ready()

    # SIGTERM / reload (router.server): not ready, refuse new completions, and at the drain
    # deadline end the streams still open.
    lifecycle = Lifecycle(on_drain=[not_ready], on_deadline=[upstream.abort_all])
    # Request bodies held at once (server.max_body_memory_bytes); freed heap pages go back to
    # the system once none is held.
    bodies = BodyBudget(config.server.max_body_memory_bytes, metrics.body_memory_bytes,
                        on_empty=trim_heap)
    # Large bodies cost CPU by their size: at most server.large_body_bytes_per_s of them.
    large = LargeBodyRate(config.server.large_body_bytes_per_s, config.server.max_body_bytes,
                          clock)

    # Completions only: refused while draining, counted in progress, bodies read in budget.
    guarded = completion_guard(lifecycle, metrics, body_timeout_s=config.server.body_timeout_s,
                               budget=bodies, large=large,
                               max_body_bytes=config.server.max_body_bytes)

    edge = Edge(metrics, config.server.max_body_bytes)
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[METRICS] = metrics
    app[POOL] = pool
    app[ADMITTER] = admitter
    app[UPSTREAM] = upstream
    app[LIFECYCLE] = lifecycle
    app.cleanup_ctx.append(client_session)
    if limits is not None:
        app.cleanup_ctx.append(limits.lifetime)
    app.cleanup_ctx.append(sample_loop)
    app.cleanup_ctx.append(share_pod_state)
    app.on_shutdown.append(mark_not_ready)
    app.on_response_prepare.append(close_when_leaving(lifecycle))
    routes = [
        ("POST", "/v1/chat/completions", guarded(partial(proxy.handle, kind="chat",
                                                         path="/v1/chat/completions"))),
        ("POST", "/v1/completions", guarded(partial(proxy.handle, kind="completion",
                                                    path="/v1/completions"))),
        ("GET", "/v1/models", endpoints.models),
        ("GET", "/metrics", endpoints.metrics),
        ("GET", "/healthz", endpoints.healthz),
        ("GET", "/health", endpoints.healthz),
        ("GET", "/readyz", endpoints.readyz),
        ("GET", "/admin/backends", endpoints.backends),
        ("GET", "/admin/buckets", admin.buckets),
        ("POST", "/admin/buckets/{name}/canary/clear", admin.canary_clear),
        ("POST", "/admin/buckets/{name}/canary/promote", admin.canary_promote),
        ("POST", "/admin/buckets/{name}/rollout", admin.rollout),
        ("GET", "/openapi.json", openapi_handler(config)),
    ]
    for method, path, handler in routes:
        if method == "GET":  # and HEAD, as web.get gives
            app.router.add_get(path, edge.wrap(path, handler))
        else:
            app.router.add_route(method, path, edge.wrap(path, handler))
    app.router.add_route("*", "/{path:.*}", edge.unrouted)  # last: 404 / 405 in OpenAI's shape
    return app
