"""The open-loop load generator.

A scheduler task walks the planned requests in order, sleeps until each one's
intended time, launches it as its own task and moves on: it never waits for a
response, so a slow server cannot slow the offered load (no coordinated
omission). Each request streams an OpenAI completion and records when its
tokens arrive; all latencies are taken from the intended send time.

After the last launch the run drains: requests still unfinished
``drain_timeout_s`` later are cancelled and recorded as ``timed_out``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from benchmarks.metrics import LogHistogram
from benchmarks.progress import Progress
from benchmarks.prompts import ApiKind, PromptFactory
from benchmarks.records import ClientOutcome, RequestRecord
from benchmarks.sse import DONE, SSEParser, interpret
from benchmarks.workload import PlannedRequest

__all__ = ["LoadConfig", "RunResult", "parse_retry_after", "run_load"]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class LoadConfig:
    url: str
    """Base URL of the server, e.g. ``http://127.0.0.1:8080``."""
    model: str
    kind: ApiKind = "chat"
    drain_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    """Longest silence between two stream reads before the request fails."""
    keep_gaps: bool = False
    """Keep every inter-token gap in the records (large); the pooled ITL is kept anyway."""
    request_id_prefix: str | None = None
    """Send ``x-request-id: <prefix><index>`` with each request (None: none), so a request
    can be found on a backend's recorded schedule."""

    @property
    def endpoint(self) -> str:
        path = "/v1/chat/completions" if self.kind == "chat" else "/v1/completions"
        return self.url.rstrip("/") + path


@dataclass(slots=True)
class RunResult:
    records: list[RequestRecord]
    gaps: LogHistogram
    started_unix: float
    elapsed_s: float
    """From the start of the run to the end of the drain."""
    notes: list[str] = field(default_factory=list)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given as a number (dates are ignored)."""
    if value is None:
        return None
    try:
        secs = float(value.strip())
    except ValueError:
        return None
    return secs if math.isfinite(secs) and secs >= 0 else None


def _error_message(body: bytes) -> str:
    try:
        err = json.loads(body)["error"]
        return str(err.get("code") or err.get("type") or "") + ": " + str(err.get("message"))[:200]
    except (ValueError, KeyError, TypeError, AttributeError):
        return body[:200].decode("utf-8", errors="replace")


class _Runner:
    def __init__(
        self,
        config: LoadConfig,
        session: aiohttp.ClientSession,
        prompts: PromptFactory,
        clock: Clock,
        progress: Progress | None,
    ) -> None:
        self.config = config
        self.session = session
        self.prompts = prompts
        self.clock = clock
        self.progress = progress
        self.gaps = LogHistogram()
        self.t0 = 0.0
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.read_timeout_s
        )

    async def one(self, p: PlannedRequest, rec: RequestRecord) -> None:
        cfg = self.config
        intended = self.t0 + p.at_s
        body = json.dumps(
            self.prompts.body(cfg.kind, cfg.model, p.prompt_tokens, p.max_tokens, p.index)
        ).encode()
        headers = {"Content-Type": "application/json"}
        if cfg.request_id_prefix is not None:
            headers["x-request-id"] = f"{cfg.request_id_prefix}{p.index}"
        if self.progress is not None:
            self.progress.sent()
        rec.sent_s = self.clock() - self.t0
        try:
            async with self.session.post(
                cfg.endpoint,
                data=body,
                headers=headers,
                timeout=self.timeout,
            ) as resp:
                rec.status = resp.status
                if resp.status != 200:
                    payload = await resp.read()
                    rec.e2e_s = self.clock() - intended
                    rec.error = _error_message(payload)
                    if resp.status == 429:
                        rec.outcome = ClientOutcome.REJECTED.value
                        rec.retry_after_s = parse_retry_after(resp.headers.get("Retry-After"))
                    return
                await self._stream(resp, rec, intended)
        except asyncio.CancelledError:
            rec.outcome = ClientOutcome.TIMED_OUT.value
            rec.error = "cancelled at the drain deadline"
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            rec.outcome = ClientOutcome.FAILED.value
            rec.error = f"{type(exc).__name__}: {exc}"[:300]
            rec.e2e_s = None
        finally:
            if self.progress is not None:
                self.progress.finished(rec)

    async def _stream(
        self, resp: aiohttp.ClientResponse, rec: RequestRecord, intended: float
    ) -> None:
        parser = SSEParser()
        done = False
        last = 0.0
        gap_sum, gap_max, gap_n = 0.0, 0.0, 0
        gaps: list[float] | None = [] if self.config.keep_gaps else None
        async for data in resp.content.iter_any():
            now = self.clock()
            for payload in parser.feed(data):
                if payload == DONE:
                    done = True
                    continue
                chunk = interpret(payload)
                if chunk.error is not None:
                    rec.error = chunk.error
                if chunk.completion_tokens is not None:
                    rec.completion_tokens = chunk.completion_tokens
                if chunk.prompt_tokens is not None:
                    rec.usage_prompt_tokens = chunk.prompt_tokens
                if not chunk.content:
                    continue
                if rec.ttft_s is None:
                    rec.ttft_s = now - intended
                else:
                    gap = now - last
                    gap_sum += gap
                    gap_max = max(gap_max, gap)
                    gap_n += 1
                    self.gaps.add(gap)
                    if gaps is not None:
                        gaps.append(gap)
                last = now
                rec.tokens += 1
        rec.e2e_s = self.clock() - intended
        if gap_n:
            rec.itl_mean_s, rec.itl_max_s = gap_sum / gap_n, gap_max
        rec.gaps_s = gaps
        if done and rec.error is None:
            rec.outcome = ClientOutcome.COMPLETED.value
        else:
            rec.outcome = ClientOutcome.FAILED.value
            rec.error = rec.error or "stream ended without [DONE]"


async def _sleep_until(t: float, clock: Clock) -> None:
    """Return once ``clock() >= t``: never before (no request is sent early).

    uvloop's timers round a delay to the millisecond and may fire up to 1 ms early; a
    timer that fired early is followed by a sleep of only what is left (under half a
    millisecond that is a bare yield to the loop), so a send is late by a fraction of a
    millisecond, not by a whole extra millisecond as with a second sleep padded by the
    timer's resolution (measured: the median send lateness of experiment 1 was 1.0 ms)."""
    while True:
        left = t - clock()
        if left <= 0:
            return
        await asyncio.sleep(left)


async def run_load(
    planned: Sequence[PlannedRequest],
    config: LoadConfig,
    prompts: PromptFactory,
    *,
    clock: Clock = time.perf_counter,
    progress: Progress | None = None,
    session: aiohttp.ClientSession | None = None,
) -> RunResult:
    """Send ``planned`` open-loop to ``config.url``; one record per planned request, in order.

    ``clock`` must tick in seconds (asyncio sleeps in seconds). A ``session`` may be
    passed in (it is left open); otherwise one is made with no connection limit,
    so that the server's admission control is the only queue.
    """
    own = session is None
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    runner = _Runner(config, session, prompts, clock, progress)
    records = [
        RequestRecord(p.index, p.at_s, p.prompt_tokens, p.max_tokens, p.bucket) for p in planned
    ]
    tasks: set[asyncio.Task[None]] = set()
    started_unix = time.time()
    runner.t0 = clock()
    ticker = asyncio.create_task(progress.tick_every_second()) if progress else None
    try:
        for p, rec in zip(planned, records, strict=True):
            await _sleep_until(runner.t0 + p.at_s, clock)
            task = asyncio.create_task(runner.one(p, rec))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=config.drain_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            progress.close()  # type: ignore[union-attr]
        if own:
            await session.close()
    return RunResult(records, runner.gaps, started_unix, clock() - runner.t0)
