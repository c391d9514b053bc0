"""The rolling swap of a bucket's compiled artifact: one replica at a time, never two down.

``POST /admin/buckets/{name}/rollout`` with the target artifact (``{"artifact": "<built-in name
or TOML path>"}`` or ``{"toml": "<artifact TOML text>"}``, the body the backend's swap call
takes, docs/backends.md) starts :meth:`Rollouts.start`. For each replica of the bucket, in config
order, the rollout:

1. waits until every *other* replica of the bucket is admitted to (healthy and ready), so at most
   one replica of the bucket is ever down for the swap;
2. skips the replica if it already reports the target identity (artifact name, version, digest);
3. stops (and says why) if the bucket's canary of the target version was rolled back;
4. takes the replica out of admission at once (the next ``/load`` report, not ready while it
   compiles, keeps it out), and calls the backend's ``POST /admin/artifact``;
5. waits the compile time the backend answered, then until the replica is admitted to again
   *and* reports the target identity (bounded by ``ready_timeout_s`` past the compile time).

At the end the target version is the bucket's stable version (a canary of that version is
promoted). Any failure stops the rollout with its reason; replicas already swapped stay swapped.
Progress is on ``GET /admin/buckets`` (the bucket's ``rollout``) and in
``lpu_router_rollout_running`` / ``lpu_router_rollout_replicas_swapped``.

With ``server.workers`` > 1 the rollout runs in the worker the call reached (the others refuse a
second one and show its progress: :mod:`router.canary_shared`); they see the compiling replica
as not ready from its ``/load`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

import aiohttp

from lpu_protocol.artifact import Artifact, ArtifactError, load_artifact, parse_artifact
from lpu_protocol.load_report import LoadReport
from router.canary import Canary, CanaryState
from router.metrics import RouterMetrics

__all__ = ["Progress", "ReplicaView", "RolloutError", "RolloutState", "Rollouts", "target_of"]


class RolloutState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"


class RolloutError(Exception):
    """A rollout cannot start: ``status`` is the HTTP status to answer, ``code`` the error
    code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ReplicaView(Protocol):
    """What a rollout reads and does in admission (the timeline admitter implements it)."""

    def replica_status(self, bucket: str, url: str) -> tuple[bool, LoadReport | None]:
        """Whether ``url`` of ``bucket`` is admitted to now, and its last ``/load`` report."""
        ...

    def hold(self, bucket: str, url: str) -> None:
        """Admit nothing more to ``url`` until its next ``/load`` report says it is ready."""
        ...


def target_of(body: Mapping[str, Any]) -> Artifact:
    """The target artifact of a rollout call's body; raises :class:`RolloutError` (400)."""
    text, spec = body.get("toml"), body.get("artifact")
    try:
        if isinstance(text, str):
            return parse_artifact(tomllib.loads(text), source="<posted toml>")
        if isinstance(spec, str) and spec:
            return load_artifact(spec)
    except (ArtifactError, tomllib.TOMLDecodeError) as exc:
        raise RolloutError(400, "invalid_artifact", str(exc)) from exc
    raise RolloutError(400, "invalid_value",
                       'Expected {"artifact": "<built-in name or path>"} or {"toml": "..."}.')


@dataclass
class Progress:
    """One bucket's rollout, as ``/admin/buckets`` shows it."""

    target: Artifact
    state: RolloutState = RolloutState.RUNNING
    swapped: list[str] = field(default_factory=list)
    """Replicas that report the target (swapped by this rollout or already serving it)."""
    current: str | None = None
    phase: str = "starting"
    """waiting_for_others | swapping | compiling | waiting_ready | done | stopped."""
    reason: str | None = None
    """Why the rollout stopped (None unless stopped)."""

    def as_json(self) -> dict[str, Any]:
        t = self.target
        return {"target": {"artifact": t.name, "version": t.version, "digest": t.digest},
                "state": str(self.state), "swapped": list(self.swapped),
                "current": self.current, "phase": self.phase, "reason": self.reason}


class _Stop(Exception):
    pass


class Rollouts:
    """Every bucket's rolling swap (at most one running per bucket). ``session`` gives the
    router's client session (None before it is made)."""

    def __init__(self, backends: Mapping[str, tuple[str, ...]], view: ReplicaView, *,
                 session: Callable[[], aiohttp.ClientSession | None],
                 canaries: Mapping[str, Canary] | None = None,
                 metrics: RouterMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 poll_s: float = 0.05, ready_timeout_s: float = 30.0) -> None:
        self._backends = dict(backends)
        self._view = view
        self._session = session
        self._canaries = dict(canaries or {})
        self._metrics = metrics
        self._clock = clock
        self._poll_s = poll_s
        self._ready_timeout_s = ready_timeout_s
        self.progress: dict[str, Progress] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, bucket: str, body: Mapping[str, Any]) -> Progress:
        """Start ``bucket``'s rollout to the artifact ``body`` names; raises
        :class:`RolloutError` (404 unknown bucket, 400 bad artifact, 409 one running)."""
        if bucket not in self._backends:
            raise RolloutError(404, "bucket_not_found", f"Bucket '{bucket}' does not exist.")
        running = self.progress.get(bucket)
        if running is not None and running.state is RolloutState.RUNNING:
            raise RolloutError(409, "rollout_in_progress", f"Bucket '{bucket}' is already"
                               f" rolling out {running.target.name} {running.target.version}.")
        p = Progress(target_of(body))
        self.progress[bucket] = p
        self._gauges(bucket, p)
        self._tasks[bucket] = asyncio.get_running_loop().create_task(
            self._run(bucket, p, dict(body)), name=f"lpu-router-rollout-{bucket}")
        return p

    async def close(self) -> None:
        """Cancel every running rollout (shutdown)."""
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def snapshot(self) -> dict[str, Any]:
        return {name: p.as_json() for name, p in self.progress.items()}

    def _gauges(self, bucket: str, p: Progress) -> None:
        if self._metrics is not None:
            self._metrics.rollout_running.labels(bucket).set(p.state is RolloutState.RUNNING)
            self._metrics.rollout_swapped.labels(bucket).set(len(p.swapped))

    def _serves_target(self, bucket: str, url: str, target: Artifact) -> bool:
        up, report = self._view.replica_status(bucket, url)
        return up and report is not None and (report.artifact, report.version) == (
            target.name, target.version) and report.digest in (None, target.digest)

    async def _until(self, ok: Callable[[], bool], timeout_s: float, what: str) -> None:
        until = self._clock() + timeout_s
        while not ok():
            if self._clock() > until:
                raise _Stop(f"{what} within {timeout_s:g} s")
            await asyncio.sleep(self._poll_s)

    def _others_up(self, bucket: str, url: str) -> bool:
        return all(self._view.replica_status(bucket, u)[0]
                   for u in self._backends[bucket] if u != url)

    def _tripped(self, bucket: str, target: Artifact) -> str | None:
        c = self._canaries.get(bucket)
        if c is not None and c.state is CanaryState.ROLLED_BACK and \
                c.canary_version == target.version:
            return f"the canary of version {target.version} was rolled back: {c.reason}"
        return None

    async def _run(self, bucket: str, p: Progress, body: dict[str, Any]) -> None:
        urls = self._backends[bucket]
        try:
            for url in urls:
                p.current = url
                p.phase = "waiting_for_others"
                await self._until(partial(self._others_up, bucket, url),
                                  self._ready_timeout_s, "the other replicas were not all up")
                if not self._serves_target(bucket, url, p.target):
                    why = self._tripped(bucket, p.target)
                    if why is not None:
                        raise _Stop(why)
                    await self._swap(bucket, url, p, body)
                p.swapped.append(url)
                self._gauges(bucket, p)
            why = self._tripped(bucket, p.target)
            if why is not None:
                raise _Stop(why)
        except _Stop as exc:
            p.state, p.phase, p.reason = RolloutState.STOPPED, "stopped", str(exc)
        else:
            p.state, p.phase, p.current = RolloutState.DONE, "done", None
            c = self._canaries.get(bucket)
            if c is not None:
                if c.canary_version == p.target.version:
                    c.promote()
                else:
                    c.stable_version = p.target.version
        self._gauges(bucket, p)

    async def _swap(self, bucket: str, url: str, p: Progress, body: dict[str, Any]) -> None:
        session = self._session()
        if session is None:
            raise _Stop("the router has no client session (shutting down)")
        p.phase = "swapping"
        self._view.hold(bucket, url)
        try:
            async with session.post(url + "/admin/artifact", json=body) as r:
                doc = await r.json(content_type=None)
                if r.status != 202:
                    raise _Stop(f"{url} refused the swap: {r.status} {doc}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _Stop(f"{url}: the swap call failed: {exc!r}") from exc
        compile_s = float(doc.get("compile_s") or 0.0)
        p.phase = "compiling"
        await asyncio.sleep(compile_s)
        p.phase = "waiting_ready"
        await self._until(lambda: self._serves_target(bucket, url, p.target),
                          self._ready_timeout_s,
                          f"{url} was not ready with {p.target.name} {p.target.version}")
