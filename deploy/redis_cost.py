"""What the shared limits cost per admitted request: Redis's time and the router's.

The router, with ``[limits] store = "redis"``, runs one check-and-charge script per admitted
request (``ADMIT``, awaited before the request goes on) and one end script when it finishes
(``END``, never awaited); :class:`router.limits.redis_store.RedisStore` sends the calls of one
loop turn in one pipeline. This drives that same store against a real Redis and reports:

* **Redis's time per call**: ``usec_per_call`` of ``EVALSHA`` in ``INFO commandstats``, reset
  before each phase (the time the single Redis thread spends in the script; reading and writing
  the sockets is extra);
* **the client's CPU per call**: the measuring process's CPU time over the calls, what a router
  worker pays on its event loop besides its 0.17-0.20 ms per proxied request.

Cases: a tenant with an RPM limit only, and with RPM and TPM limits plus a bucket concurrency
cap (the most work the script does for one admission); ``--concurrency`` admissions in flight
at once (one pipeline per loop turn, as under load), then their ends. Keys go under
``--prefix``; every request is finished, so the leases are given back::

    PYTHONPATH=. python3 deploy/redis_cost.py --url redis://127.0.0.1:6379/15 --calls 4000

Numbers are for docs/deploy.md ("How many workers and replicas"); run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from router.limits import Ask
from router.limits.redis_store import RedisStore

__all__ = ["Cost", "main", "measure"]


@dataclass(frozen=True, slots=True)
class Cost:
    case: str
    server_us: float
    """Redis's time per call (microseconds)."""
    client_us: float
    """This process's CPU per call (microseconds)."""


async def _server_us(client: aioredis.Redis) -> float:
    stats = await client.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))


def _asks(store: RedisStore, tenant: str, calls: int, full: bool) -> list[Ask]:
    return [Ask(member=store.new_member(), tenant=tenant, requests_per_minute=10**9,
                tokens_per_minute=10**12 if full else None, cost_tokens=500, bucket=tenant,
                max_concurrency=10**6 if full else None, max_queue=None, wait_s=0.0,
                lease_s=60.0) for _ in range(calls)]


async def measure(url: str, calls: int, concurrency: int, prefix: str) -> list[Cost]:
    """Run every case against ``url`` through the router's own store."""
    stats = aioredis.Redis.from_url(url)
    store = RedisStore(url, key_prefix=prefix, timeout_s=1.0)
    await store.start()
    out: list[Cost] = []
    try:
        for case, full in (("tenant RPM", False),
                           ("tenant RPM + TPM, bucket concurrency cap", True)):
            asks = _asks(store, "full" if full else "rpm", calls, full)
            await store.admit(_asks(store, "warm", 1, full)[0])  # scripts loaded, connected
            await stats.config_resetstat()
            cpu = time.process_time()
            for first in range(0, calls, concurrency):
                verdicts = await asyncio.gather(*(store.admit(a)
                                                  for a in asks[first:first + concurrency]))
                assert all(v.over is None for v in verdicts), verdicts
            out.append(Cost(f"admit, {case} ({concurrency} in flight)", await _server_us(stats),
                            (time.process_time() - cpu) / calls * 1e6))
            await stats.config_resetstat()
            cpu = time.process_time()
            for first in range(0, calls, concurrency):
                for a in asks[first:first + concurrency]:
                    store.finish(a, 100)
                await store.drain()
            out.append(Cost(f"end, {case}", await _server_us(stats),
                            (time.process_time() - cpu) / calls * 1e6))
    finally:
        await store.aclose()
        await stats.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--prefix", default="lpu-cost:")
    args = parser.parse_args(argv)
    import uvloop

    costs = uvloop.run(measure(args.url, args.calls, args.concurrency, args.prefix))
    print("| call | Redis time per call | client CPU per call |")
    print("| --- | --- | --- |")
    for c in costs:
        print(f"| {c.case} | {c.server_us:.1f} us | {c.client_us:.1f} us |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
