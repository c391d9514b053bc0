"""One load process of the emulator fidelity benchmark (``python -m benchmarks.fidelity_client``).

It keeps ``--streams`` streaming requests in flight (closed loop: each worker sends its next
request when one ends), worker ``i`` on ``urls[(offset + i) % len(urls)]``, and records when
every token arrived. The benchmark starts several of these, so the load generator has
processes of its own and the emulator's figures are not the client's.

Protocol with the benchmark: the process prints ``ready`` once its session exists, then waits
for the file ``--go`` to appear; it holds one line, ``BEGIN MEASURE_FROM MEASURE_TO`` in
``time.monotonic()`` seconds (CLOCK_MONOTONIC is one clock for every process on the machine).
Streams start at BEGIN; tokens arriving in ``[MEASURE_FROM, MEASURE_TO)`` are measured; no
request starts at or after MEASURE_TO, and every started request is read to its end. Then it
writes ``--out`` (JSON: totals) and ``--out`` + ``.npy`` (float32 ms, two rows: lateness of
every measured token, and 1 where the token was a first token, else 0) and exits 0.

A token ``k`` of a request sent at ``t_send`` is due at ``t_send + prefill + k * per_token``;
the emulator runs with as many slots as streams, so nothing queues and the client's lateness
is the emulator's plus loopback transit plus the client's own event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

__all__ = ["main"]

_TOKEN = b'"delta":{"content":'


class _Recorder:
    """Per measured read: (arrival, send time, first token index, tokens in the read)."""

    def __init__(self, measure_from: float, measure_to: float) -> None:
        self.reads: list[tuple[float, float, int, int]] = []
        self.measure_from = measure_from
        self.measure_to = measure_to
        self.tokens_total = 0
        self.requests_total = 0


async def _one_stream(session: aiohttp.ClientSession, url: str, body: bytes,
                      rec: _Recorder) -> None:
    t_send = time.monotonic()
    async with session.post(url + "/v1/chat/completions", data=body,
                            headers={"Content-Type": "application/json"}) as resp:
        resp.raise_for_status()
        k = 0
        tail = b""
        lo, hi = rec.measure_from, rec.measure_to
        async for data in resp.content.iter_any():
            now = time.monotonic()
            buf = tail + data
            cut = buf.rfind(b"\n\n") + 2
            count = buf.count(_TOKEN, 0, cut)
            tail = buf[cut:]
            if count and lo <= now < hi:
                rec.reads.append((now, t_send, k, count))
            k += count
    rec.tokens_total += k
    rec.requests_total += 1


async def _worker(session: aiohttp.ClientSession, url: str, body: bytes,
                  rec: _Recorder) -> None:
    while time.monotonic() < rec.measure_to:
        await _one_stream(session, url, body, rec)


def _go_times(go: Path) -> tuple[float, float, float]:
    """Wait for the go file (run in a thread); its three times."""
    while not go.exists():
        time.sleep(0.01)
    begin, lo, hi = (float(x) for x in go.read_text().split())
    return begin, lo, hi


def _lateness(reads: list[tuple[float, float, int, int]], prefill_s: float,
              per_token_s: float) -> np.ndarray:
    """Rows: lateness (ms) of every measured token; 1.0 for a first token."""
    if not reads:
        return np.zeros((2, 0), dtype=np.float32)
    arr = np.array(reads, dtype=float)
    now, t_send, k0, count = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3].astype(int)
    rows = np.repeat(np.arange(len(arr)), count)
    offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    k = k0[rows] + offsets
    late = (now[rows] - (t_send[rows] + prefill_s + k * per_token_s)) * 1e3
    return np.stack([late, (k == 0).astype(float)]).astype(np.float32)


async def _run(args: argparse.Namespace) -> None:
    body = json.dumps({
        "model": args.model, "messages": [{"role": "user", "content": "benchmark"}],
        "max_tokens": args.max_tokens, "stream": True,
    }).encode()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        print("ready", flush=True)
        begin, lo, hi = await asyncio.to_thread(_go_times, args.go)
        rec = _Recorder(lo, hi)
        await asyncio.sleep(max(0.0, begin - time.monotonic()))
        urls = args.urls
        await asyncio.gather(*(
            _worker(session, urls[(args.offset + i) % len(urls)], body, rec)
            for i in range(args.streams)
        ))
    late = _lateness(rec.reads, args.prefill_ms / 1e3, args.per_token_ms / 1e3)
    np.save(args.out.with_suffix(".npy"), late)
    args.out.write_text(json.dumps({
        "tokens_total": rec.tokens_total, "requests_total": rec.requests_total,
        "measured_tokens": int(late.shape[1]),
    }))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fidelity_client")
    p.add_argument("--urls", nargs="+", required=True)
    p.add_argument("--offset", type=int, default=0, help="worker i uses urls[(offset+i) % n]")
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--model", default="bench-model")
    p.add_argument("--max-tokens", type=int, default=300)
    p.add_argument("--prefill-ms", type=float, required=True)
    p.add_argument("--per-token-ms", type=float, required=True)
    p.add_argument("--go", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        asyncio.run(_run(args))
    else:
        uvloop.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
