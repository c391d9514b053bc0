"""A one-line progress display for long runs.

On a terminal the line is rewritten in place every second; otherwise (a log
file, CI) a plain line is written every ``plain_every_s`` seconds. Counters are
updated by the load generator; the display only reads them.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import TextIO

from benchmarks.records import ClientOutcome, RequestRecord

__all__ = ["Progress"]


class Progress:
    def __init__(
        self,
        total: int,
        duration_s: float,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
        plain_every_s: float = 10.0,
    ) -> None:
        self.total = total
        self.duration_s = duration_s
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.plain_every_s = plain_every_s
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = clock()
        self._last_plain = -1e9
        self.n_sent = self.in_flight = 0
        self.counts = {o.value: 0 for o in ClientOutcome}
        self._recent_ttft: list[float] = []

    def sent(self) -> None:
        self.n_sent += 1
        self.in_flight += 1

    def finished(self, rec: RequestRecord) -> None:
        self.in_flight -= 1
        self.counts[rec.outcome] = self.counts.get(rec.outcome, 0) + 1
        if rec.ttft_s is not None:
            self._recent_ttft.append(rec.ttft_s)

    def line(self) -> str:
        elapsed = self.clock() - self._start
        ttft = sorted(self._recent_ttft)
        self._recent_ttft = []
        p50 = f"{ttft[len(ttft) // 2] * 1e3:.0f}ms" if ttft else "-"
        c = self.counts
        return (
            f"[{elapsed:6.1f}/{self.duration_s:.0f}s] sent {self.n_sent}/{self.total}"
            f" in-flight {self.in_flight} ok {c['completed']} 429 {c['rejected']}"
            f" failed {c['failed'] + c['timed_out']} ttft-p50(1s) {p50}"
        )

    def render(self) -> None:
        now = self.clock()
        if self._tty:
            self.stream.write("\r\x1b[2K" + self.line())
        elif now - self._last_plain >= self.plain_every_s:
            self._last_plain = now
            self.stream.write(self.line() + "\n")
        else:
            return
        self.stream.flush()

    async def tick_every_second(self) -> None:
        while True:
            self.render()
            await asyncio.sleep(1.0)

    def close(self) -> None:
        if self._tty:
            self.stream.write("\r\x1b[2K" + self.line() + "\n")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
