"""A pod's canary and rollout state, shared by its worker processes through one small file.

With ``server.workers`` > 1 each worker admits its own share of the traffic, so each judges its
own share of a canary (:mod:`router.canary`) and an admin call reaches one worker. What must be
pod-wide is the *outcome*: a rollback by any worker stops the canary in every worker; an
operator's clear or promotion, sent to one worker, acts in all; a rolling swap
(:mod:`router.rollout`) runs in one worker only and the others show its progress.

Why a file: the workers share one host and already share one directory (the metrics'
multiprocess directory, an ``emptyDir`` in the manifests), the state changes a few times per
canary, and a file needs no new process, no relay through the supervisor and no Redis (the
limits' store is optional, and a canary must work without it). Every write is a
read-modify-write under an exclusive ``flock`` of a lock file beside it, written to a temporary
file and renamed over the old one (``os.replace``: readers see the old or the new document,
never half of one). The file is named after the supervisor's pid, so a new pod starts clean.

The document, per bucket::

    {"buckets": {"<bucket>": {"canary": {"epoch": 3, "state": "rolled_back", "reason": "...",
                                        "stable_version": "...", "canary_version": "...",
                                        "worker": 1},
                              "rollout": {"worker": 0, "pid": 4711, "state": "running", ...}}}}

:meth:`PodState.sync` (every ``poll_s``, :meth:`PodState.run`) first applies every bucket's
canary entry whose ``epoch`` is newer than the one this worker last applied (a rollback, a clear,
a promotion, a new stable version), then publishes, as the next epoch, a local change nobody
published yet (this worker's judge rolled its canary back; an admin call here cleared or promoted
it; a rollout here ended), then this worker's rollout progress when it changed. Two workers
changing one bucket within one poll: the one written first is applied by the other, whose own
change (if it still differs) is then published as the next epoch: every worker ends in the
state published last. A change takes at most ``poll_s`` (plus a write) to reach every worker:
the canary requests the other workers admit meanwhile add to the stated rollback bound.

:meth:`PodState.claim_rollout` makes the rollout single-owner: a rollout call is refused (409)
while the file shows a running rollout of that bucket owned by another live worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from router.canary import Canary, CanaryState
from router.rollout import RolloutError, Rollouts, RolloutState
from router.worker_id import WorkerId

__all__ = ["POLL_S", "PodState", "state_file"]

log = logging.getLogger("lpu_router.canary")

POLL_S = 0.1
"""How often a worker reads the shared state (one ``stat`` when nothing changed)."""

Signature = tuple[str, str | None, str | None]
"""(state, stable_version, canary_version) of one canary: what is shared."""


def state_file(directory: str | Path, supervisor_pid: int) -> Path:
    """The pod's state file in ``directory``."""
    return Path(directory) / f"lpu-router-pod-{supervisor_pid}.json"


def _signature(c: Canary) -> Signature:
    return (str(c.state), c.stable_version, c.canary_version)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PodState:
    """This worker's view of the pod's shared canary and rollout state (module docstring)."""

    def __init__(self, path: Path, worker: WorkerId, canaries: Mapping[str, Canary],
                 rollouts: Rollouts | None, *, poll_s: float = POLL_S) -> None:
        self.path = path
        self._lock = path.with_suffix(".lock")
        self._worker = worker
        self._canaries = dict(canaries)
        self._rollouts = rollouts
        self._poll_s = poll_s
        self._seen: tuple[int, int, int] | None = None
        """(inode, size, mtime_ns) of the file when last read."""
        self._doc: dict[str, Any] = {"buckets": {}}
        self._epoch = dict.fromkeys(self._canaries, 0)
        """Per bucket: the canary epoch this worker last applied or published."""
        self._known = {name: _signature(c) for name, c in self._canaries.items()}
        """Per bucket: the canary's state as last applied or published (a difference is a
        local change to publish)."""
        self._published: dict[str, dict[str, Any]] = {}
        """Per bucket: this worker's rollout progress as last published."""
        self._claimed: dict[str, dict[str, Any] | None] = {}
        """Per bucket: the file's rollout entry before this worker's last claim."""

    # -- the file ------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {"buckets": {}}
        except ValueError:  # never half-written (renamed into place): only a foreign file
            log.warning("pod state %s is not JSON; starting it afresh", self.path)
            return {"buckets": {}}
        return doc if isinstance(doc, dict) and isinstance(doc.get("buckets"), dict) \
            else {"buckets": {}}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The current document, under the pod's write lock; written back (atomically) when
        the block ends without an exception."""
        with open(self._lock, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                doc = self._read()
                yield doc
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(doc, sort_keys=True), "utf-8")
                os.replace(tmp, self.path)
                self._doc = doc
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _refresh(self) -> bool:
        """Read the file if it changed since the last read; True when it did."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key == self._seen:
            return False
        self._seen = key
        self._doc = self._read()
        return True

    # -- one step --------------------------------------------------------------------------

    def sync(self) -> None:
        """Apply what other workers published, then publish this worker's changes."""
        self._refresh()  # a GET /admin/buckets may have read it first: apply by epoch
        for name, entry in self._doc["buckets"].items():
            canary = entry.get("canary") if isinstance(entry, dict) else None
            if isinstance(canary, dict):
                self._apply(name, canary)
        for name, c in self._canaries.items():
            if _signature(c) != self._known[name]:
                self._publish_canary(name, c)
        if self._rollouts is not None:
            for name, progress in self._rollouts.progress.items():
                doc = progress.as_json()
                if doc != self._published.get(name):
                    self._publish_rollout(name, doc)

    def _apply(self, name: str, entry: Mapping[str, Any]) -> None:
        c = self._canaries.get(name)
        epoch = entry.get("epoch")
        if c is None or not isinstance(epoch, int) or epoch <= self._epoch[name]:
            return
        self._epoch[name] = epoch
        state, stable = entry.get("state"), entry.get("stable_version")
        same = entry.get("canary_version") == c.canary_version
        if state == CanaryState.ROLLED_BACK and same and c.state is CanaryState.ACTIVE:
            c.roll_back(f"{entry.get('reason')} (judged by worker {entry.get('worker')})")
        elif state == CanaryState.ACTIVE and same and c.state is CanaryState.ROLLED_BACK:
            c.clear()
        elif state == CanaryState.NONE and c.config is not None and \
                c.canary_version == stable:
            c.promote()
        if same and isinstance(stable, str) and c.stable_version != stable:
            c.stable_version = stable  # a rollout's end, in another worker
        # The pod's state as the file says: a local state that still differs (a change made
        # here meanwhile) is published as the next epoch.
        self._known[name] = (str(state), stable if isinstance(stable, str) else None,
                             entry.get("canary_version"))

    def _publish_canary(self, name: str, c: Canary) -> None:
        with self._locked() as doc:
            entry = doc["buckets"].setdefault(name, {})
            old = entry.get("canary") or {}
            if int(old.get("epoch", 0)) > self._epoch[name]:
                # Someone published first: theirs wins; this worker applies it next sync.
                self._seen = None
                return
            epoch = int(old.get("epoch", 0)) + 1
            state, stable, version = _signature(c)
            entry["canary"] = {"epoch": epoch, "state": state, "reason": c.reason,
                               "stable_version": stable, "canary_version": version,
                               "worker": self._worker.index}
        self._epoch[name] = epoch
        self._known[name] = (state, stable, version)
        log.info("bucket %s: canary %s published to the pod (epoch %d)", name, state, epoch)

    def _publish_rollout(self, name: str, progress: dict[str, Any]) -> None:
        with self._locked() as doc:
            entry = doc["buckets"].setdefault(name, {})
            entry["rollout"] = {"worker": self._worker.index, "pid": self._worker.pid,
                                **progress}
        self._published[name] = progress

    # -- the admin calls -------------------------------------------------------------------

    def claim_rollout(self, bucket: str) -> None:
        """Raise :class:`RolloutError` (409) while another live worker runs ``bucket``'s
        rollout; otherwise mark this worker as its owner (the rollout then starts here)."""
        with self._locked() as doc:
            entry = doc["buckets"].setdefault(bucket, {})
            r = entry.get("rollout")
            if isinstance(r, dict) and r.get("state") == RolloutState.RUNNING and \
                    r.get("pid") != self._worker.pid and _alive(int(r.get("pid", 0))):
                raise RolloutError(409, "rollout_in_progress",
                                   f"Bucket '{bucket}' is rolling out in worker"
                                   f" {r.get('worker')} (pid {r.get('pid')}).")
            self._claimed[bucket] = r if isinstance(r, dict) else None
            entry["rollout"] = {"worker": self._worker.index, "pid": self._worker.pid,
                                "state": str(RolloutState.RUNNING), "phase": "starting"}

    def release_rollout(self, bucket: str) -> None:
        """Undo :meth:`claim_rollout` (the rollout did not start here after all)."""
        previous = self._claimed.pop(bucket, None)
        with self._locked() as doc:
            entry = doc["buckets"].setdefault(bucket, {})
            if previous is None:
                entry.pop("rollout", None)
            else:
                entry["rollout"] = previous

    def rollouts(self) -> dict[str, dict[str, Any]]:
        """Every bucket's rollout as the pod's file last said (with its ``worker``)."""
        self._refresh()
        return {name: dict(entry["rollout"]) for name, entry in self._doc["buckets"].items()
                if isinstance(entry, dict) and isinstance(entry.get("rollout"), dict)}

    async def run(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        """:meth:`sync` every ``poll_s`` until cancelled; a failing step is logged, not fatal."""
        while True:
            try:
                self.sync()
            except OSError as exc:
                log.warning("pod state %s: %s", self.path, exc)
                if on_error is not None:
                    on_error(exc)
            await asyncio.sleep(self._poll_s)
