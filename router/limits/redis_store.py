"""The shared limits store on Redis: one atomic script call per admitted request.

:meth:`RedisStore.admit` runs :data:`~router.limits.scripts.ADMIT` (check every limit of the
:class:`~router.limits.Ask` and charge them all, or charge nothing and say which is over) and
waits at most ``timeout_s`` for it. :meth:`RedisStore.finish` and :meth:`RedisStore.refund`
queue :data:`~router.limits.scripts.END` calls that nobody awaits: a request never waits for
its end to be recorded.

Every call made in one turn of the event loop leaves at the end of that turn, all of them in one
pipeline (one write, one read, on one connection): under load the socket work is shared by
the turn's requests instead of paid by each. The scripts run by ``EVALSHA`` (loaded once, and
again when a restarted server has forgotten them), never through the client's pipeline script
helper, which asks ``SCRIPT EXISTS`` on every pipeline.

One connection pool per process (the client is made inside the running loop), no retries in
the client (a retried script could charge twice; the caller's back-off decides when to ask
again). Every failure is mapped to :class:`~router.limits.StoreError` here, and nowhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.admission.ratelimit import WINDOW_S
from router.limits import Ask, StoreError, Verdict
from router.limits.scripts import ADMIT, END
from router.outcomes import RejectReason

__all__ = ["RedisStore"]

log = logging.getLogger("lpu_router.limits")

_OVER = {r.value.encode(): r for r in (RejectReason.TENANT_RPM, RejectReason.TENANT_TPM,
                                       RejectReason.CONCURRENCY, RejectReason.QUEUE_FULL)}
_SCRIPTS = {name: (text, hashlib.sha1(text.encode()).hexdigest())
            for name, text in (("admit", ADMIT), ("end", END))}
_BATCH_TIMEOUT_S = 1.0
"""The longest one pipeline may take: its admits have given up long before (``timeout_s``);
its ends hold no request up."""

_Call = tuple[str, list[str], str | list[str | int], "asyncio.Future[Any] | None"]
"""(script name, keys, argument(s), the admit's future; None for an end)."""


class RedisStore:
    """Tenant windows, leases and queues of every process that shares one Redis server."""

    def __init__(self, url: str, *, key_prefix: str = "lpu:", timeout_s: float = 0.025,
                 grace_s: float = 30.0, window_s: float = WINDOW_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.window_s = window_s
        self._prefix = key_prefix
        self._client: aioredis.Redis | None = None
        self._loaded = False
        self._keys: dict[tuple[str | None, str], list[str]] = {}
        self._pending: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._tag = f"{os.getpid():x}.{secrets.token_hex(3)}:"
        self._seq = itertools.count()
        self._tail = f" {window_s!r} {grace_s!r}"
        self.end_errors = 0
        """Ends that could not be recorded (their leases expire on their own)."""

    async def start(self) -> None:
        """Make the client and its pool (inside the running loop); connects lazily."""
        timeout = max(self.timeout_s, 0.001)
        self._client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=timeout, socket_timeout=_BATCH_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0))

    async def aclose(self) -> None:
        """Send the ends still queued (bounded), then close the pool."""
        self._flush()
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=_BATCH_TIMEOUT_S)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def new_member(self) -> str:
        """An id no other process sharing the server hands out (no whitespace)."""
        return f"{self._tag}{next(self._seq)}"

    def _keys_of(self, tenant: str | None, bucket: str) -> list[str]:
        keys = self._keys.get((tenant, bucket))
        if keys is None:
            p = self._prefix
            t = f"{p}t:{tenant if tenant is not None else ''}:"
            b = f"{p}b:{bucket}:"
            keys = self._keys[tenant, bucket] = [t + "rq", t + "tk", t + "tkc", t + "tks",
                                                 b + "ls", b + "q"]
        return keys

    async def admit(self, ask: Ask, now: float | None = None) -> Verdict:
        """Check and charge ``ask`` in one step; ``now``: Redis's clock when None (seconds).
        Raises :class:`StoreError` on a timeout (``timeout_s``), a lost connection or a
        script error."""
        if self._client is None:
            raise StoreError("connection", "the limits store is not started")
        arg = (f"{'-' if now is None else repr(now)} {ask.member}"
               f" {ask.requests_per_minute or 0} {ask.tokens_per_minute or 0} {ask.cost_tokens}"
               f" {-1 if ask.max_concurrency is None else ask.max_concurrency}"
               f" {-1 if ask.max_queue is None else ask.max_queue}"
               f" {ask.wait_s!r} {ask.lease_s!r}{self._tail}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(("admit", self._keys_of(ask.tenant, ask.bucket), arg, future))
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await future
        except TimeoutError as exc:
            raise StoreError("timeout", "the limits store did not answer in time") from exc
        return _verdict(reply)

    def finish(self, ask: Ask, unused_tokens: int) -> None:
        """The request ended: give its lease and queue place back and ``unused_tokens`` of its
        token charge. Sent at the end of this loop turn; never awaited."""
        if self._client is not None:
            self._queue(("end", self._keys_of(ask.tenant, ask.bucket),
                         [ask.member, "finish", max(0, unused_tokens)], None))

    def refund(self, ask: Ask) -> None:
        """The request never ran (refused later, or its charge is unknown after an error):
        take every charge back. Sent at the end of this loop turn; never awaited."""
        if self._client is not None:
            self._queue(("end", self._keys_of(ask.tenant, ask.bucket),
                         [ask.member, "refund", 0], None))

    def _queue(self, call: _Call) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(call)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        """One pipeline for the turn's calls; each admit's future gets its reply or error."""
        try:
            async with asyncio.timeout(_BATCH_TIMEOUT_S):
                replies = await self._pipeline(batch)
                again = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if again:  # a restarted server forgot the scripts: load them, send those again
                    self._loaded = False
                    for i, r in zip(again, await self._pipeline([batch[i] for i in again]),
                                    strict=True):
                        replies[i] = r
        except (RedisError, OSError, TimeoutError) as exc:
            error = _store_error(exc)
            if error.kind == "connection":
                self._drop_idle()
            replies = [error] * len(batch)
        ends_failed = 0
        for (_, _, _, future), reply in zip(batch, replies, strict=True):
            failed = isinstance(reply, BaseException)
            if future is None:
                ends_failed += failed
            elif not future.done():  # its request may have given up (timeout, cancel)
                if failed:
                    future.set_exception(reply if isinstance(reply, StoreError)
                                         else _store_error(reply))
                else:
                    future.set_result(reply)
        if ends_failed:
            self.end_errors += ends_failed
            log.debug("limits store: %d end(s) not recorded", ends_failed)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        assert self._client is not None
        if not self._loaded:
            for text, _ in _SCRIPTS.values():
                await self._client.script_load(text)
            self._loaded = True
        pipe = self._client.pipeline(transaction=False)
        for name, keys, args, _ in batch:
            sha = _SCRIPTS[name][1]
            if isinstance(args, str):
                pipe.evalsha(sha, len(keys), *keys, args)
            else:
                pipe.evalsha(sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    def _drop_idle(self) -> None:
        """A lost connection means the server went away: the pool's idle connections went
        with it, and each would fail once more after it is back. Closed now, without waiting."""
        if self._client is None:
            return
        self._loaded = False
        task = asyncio.get_running_loop().create_task(
            self._client.connection_pool.disconnect(inuse_connections=False))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        """Wait until every call queued so far has been sent (tests)."""
        await asyncio.sleep(0)
        self._flush()
        while self._sending:
            await asyncio.wait(set(self._sending))


def _store_error(exc: BaseException) -> StoreError:
    """The one map from the client's failures to :class:`StoreError`."""
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return StoreError("timeout", "the limits store did not answer in time")
    if isinstance(exc, RedisConnectionError | OSError):
        return StoreError("connection", f"the limits store is unreachable: {exc}")
    return StoreError("script", f"the limits store failed the script: {exc}")


def _verdict(reply: Any) -> Verdict:
    try:
        status, retry, nreq, rq_reset, used, tk_reset, in_flight, queued = reply
        over = None if status == b"ok" else _OVER[status]
        return Verdict(over, float(retry), int(nreq), float(rq_reset), int(used),
                       float(tk_reset), int(in_flight), int(queued))
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError("script", f"the limits store gave a malformed answer: {reply!r}"
                         ) from exc
