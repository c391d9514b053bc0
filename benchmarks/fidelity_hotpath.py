"""The emulator's own CPU per write and per request, on a virtual clock (no sockets, no load).

``python3 -m benchmarks.fidelity_hotpath [--streams 250] [--seconds 10]``: the fidelity
benchmark's replica (streams = slots, 300 tokens at 80 ms prefill and 1.786 ms per token,
budget 25000 writes/s: a 10 ms quantum at 250 streams) with its two hot paths driven alone:

* **ticker**: every stream handed to one :class:`~lpu_emulator.ticker.Ticker`, timers fired
  in time order at their instants, each stream followed by a new one when it ends; the sink
  keeps the bytes. Reports process CPU per write: the Python of a write (frames, lateness,
  planning, heap), none of the send system call's kernel time.
* **admit**: :meth:`~lpu_emulator.backend.Backend.admit` of the fidelity client's request
  and :meth:`~lpu_emulator.backend.Backend.end` of the job that ends first, with every slot
  busy (what each request costs the backend: parsing, counting, placing, the schedule
  header of all the slots), without aiohttp.

Each also prints a digest of what it produced (every byte written and the histograms; every
``x-lpu-schedule`` header and the slot-seconds float): two trees whose digests agree behave
alike on these paths, whatever their CPU. CPU is ``time.process_time`` over the measured
virtual seconds (after one of warm-up), so the figures depend on the machine and its load;
compare two trees in one session, several runs each.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from lpu_emulator.backend import Admission, Backend
from lpu_emulator.engine import Job
from lpu_emulator.frames import ResponseIdentity, StreamFrames
from lpu_emulator.metrics import make_metrics
from lpu_emulator.options import EmulatorOptions
from lpu_emulator.text import TokenText, token_ids
from lpu_emulator.ticker import Handback, TickedStream, Ticker
from lpu_protocol.artifact import Artifact

__all__ = ["HotPath", "measure_admit", "measure_ticker"]

PREFILL_S, PER_TOKEN_S, TOKENS = 0.080, 0.001786, 300
WRITE_BUDGET_PER_S = 25000.0


@dataclass(frozen=True)
class HotPath:
    """One path's run: how many units (writes or requests), CPU per unit, what it did."""

    units: int
    us_per_unit: float
    tokens: int
    digest: str


def _artifact(slots: int) -> Artifact:
    return Artifact(name="bench-fidelity", model="bench-model", version="0",
                    compiler_version="bench", precision="fp8", target="emulated",
                    max_seq_len=TOKENS + 512, max_output_tokens=TOKENS, slots=slots,
                    prefill_s=PREFILL_S, per_token_s=PER_TOKEN_S, compile_time_s=0.0)


class _Timer:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _VirtualTimers:
    """A clock and timers fired in time order by :meth:`run_until`."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None], _Timer]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, cb: Callable[[], None]) -> _Timer:
        timer = _Timer()
        heapq.heappush(self._heap, (self.now + delay, next(self._seq), cb, timer))
        return timer

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            at, _, cb, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                self.now = max(self.now, at)
                cb()
        self.now = t


class _Done:
    """What the ticker and this driver use of a future; its callbacks run as soon as it is
    resolved (there is no event loop)."""

    def __init__(self) -> None:
        self._done = False
        self._callbacks: list[Callable[[_Done], None]] = []

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Handback) -> None:
        self._done = True
        for cb in self._callbacks:
            cb(self)

    def add_done_callback(self, cb: Callable[[_Done], None]) -> None:
        self._callbacks.append(cb)


class _Sink:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.digest.update(data)

    def buffered(self) -> int:
        return 0

    def closing(self) -> bool:
        return False


def measure_ticker(streams: int, seconds: float) -> HotPath:
    """The ticker writing ``streams`` streams for ``seconds`` virtual seconds."""
    timers = _VirtualTimers()
    text = TokenText()
    ident = ResponseIdentity("chat", "chatcmpl-hotpath", 0, "bench-model", "fp_0", "req_0")
    series = make_metrics().child("bench-model")
    sink = _Sink()
    quantum = max(0.0015, streams / WRITE_BUDGET_PER_S)
    ticks = _artifact(streams).timings
    service = ticks.service_s(TOKENS)
    ids = [token_ids(k.to_bytes(16, "little"), TOKENS) for k in range(16)]
    seq = itertools.count()
    ticker = Ticker(clock=timers.clock, call_later=timers.call_later,
                    make_future=_Done)  # type: ignore[arg-type]

    def start(at: float) -> None:
        i = next(seq)
        job = Job(id=i, arrival=at, output_tokens=TOKENS, service_s=service, timings=ticks,
                  start=at, end=at + service)
        s = TickedStream(job=job, ids=ids[i % len(ids)], frames=StreamFrames(ident, False),
                         token_json=text.json, series=series, sink=sink,
                         finish=b"data: [DONE]\n\n", quantum=lambda: quantum, sent=1,
                         last_write=job.token_time(0))

        def hand_over() -> None:
            ended = ticker.run(s, TOKENS)
            ended.add_done_callback(lambda _: timers.call_later(0.0, lambda: start(timers.now)))

        timers.call_later(job.token_time(0) - timers.now, hand_over)

    for k in range(streams):
        start(k * service / streams)
    timers.run_until(1.0)
    writes0, cpu0 = ticker.writes, time.process_time()
    timers.run_until(1.0 + seconds)
    cpu, writes = time.process_time() - cpu0, ticker.writes - writes0
    later, per_write = series.token_later, series.lateness_later
    sink.digest.update(json.dumps([later.counts, later.sum, per_write.counts,
                                   per_write.sum]).encode())
    return HotPath(writes, cpu / writes * 1e6 if writes else float("nan"), later.count,
                   sink.digest.hexdigest()[:16])


def measure_admit(slots: int, seconds: float) -> HotPath:
    """Admission and end with ``slots`` slots busy for ``seconds`` virtual seconds."""
    art = _artifact(slots)
    now = [100.0]
    backend = Backend(EmulatorOptions(art), clock=lambda: now[0], metrics=make_metrics())
    body = json.dumps({"model": "bench-model", "messages": [{"role": "user",
                       "content": "benchmark"}], "max_tokens": TOKENS, "stream": True}).encode()
    digest = hashlib.sha256()
    live: list[tuple[float, int, Admission]] = []
    seq = itertools.count()
    service = art.timings.service_s(TOKENS)
    for k in range(slots):
        now[0] = 100.0 + k * service / slots
        adm = backend.admit(body, "chat", None)
        heapq.heappush(live, (adm.job.end, next(seq), adm))
    requests = 0
    until = now[0] + seconds
    cpu0 = time.process_time()
    while now[0] < until:
        _, _, ended = heapq.heappop(live)
        now[0] = ended.job.end + 1e-6
        backend.end(ended, completed=True)
        adm = backend.admit(body, "chat", None)
        digest.update(adm.schedule_header.encode())
        heapq.heappush(live, (adm.job.end, next(seq), adm))
        requests += 1
    cpu = time.process_time() - cpu0
    digest.update(repr(backend.schedule.engine.busy_s).encode())
    return HotPath(requests, cpu / requests * 1e6 if requests else float("nan"),
                   requests * TOKENS, digest.hexdigest()[:16])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.fidelity_hotpath",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--streams", type=int, default=250, help="streams = slots of the replica")
    p.add_argument("--seconds", type=float, default=10.0, help="virtual seconds measured")
    args = p.parse_args(argv)
    t = measure_ticker(args.streams, args.seconds)
    print(f"ticker: {t.units} writes ({t.tokens} later tokens), {t.us_per_unit:.2f} us CPU per"
          f" write (Python only), digest {t.digest}")
    a = measure_admit(args.streams, args.seconds)
    print(f"admit: {a.units} requests, {a.us_per_unit:.2f} us CPU per request (admit + end),"
          f" digest {a.digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
