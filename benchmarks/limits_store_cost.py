"""CPU per admitted request of the Redis limits store: one check-and-charge script call and one
batched end, as the router makes them (:class:`router.limits.redis_store.RedisStore`).

Every call charges a tenant with both limits and a bucket with both caps (every key the script
has is touched); limits are set high, so every call is admitted. The router side is this
process's CPU time (``time.process_time``: the client library, the event loop, the socket
calls); the server side is ``redis-server``'s from ``INFO cpu``. ``--at-once`` requests are
in flight together (the calls of one loop turn share one pipeline)::

    redis-server --port 6399 --save "" --appendonly no --daemonize yes
    python3 -m benchmarks.limits_store_cost --redis-url redis://127.0.0.1:6399/0 --at-once 32
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis.asyncio as aioredis
import uvloop

from router.limits import Ask
from router.limits.redis_store import RedisStore

__all__ = ["main", "measure"]


async def _server_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(url: str, requests: int, at_once: int) -> dict[str, float]:
    """Per request: router CPU, server CPU and wall time (microseconds)."""
    store = RedisStore(url, timeout_s=1.0, key_prefix="lpu-bench:")
    await store.start()
    probe = aioredis.Redis.from_url(url)

    async def one() -> None:
        ask = Ask(store.new_member(), "bench", 10**9, 10**12, 300, "short", 10**6, 10**6,
                  0.05, 30.0)
        verdict = await store.admit(ask)
        assert verdict.over is None, verdict
        store.finish(ask, 100)

    try:
        for _ in range(200):  # connections open, scripts loaded
            await one()
        await store.drain()
        rounds = max(1, requests // at_once)
        cpu0, srv0, wall0 = time.process_time(), await _server_cpu(probe), time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(at_once)))
        await store.drain()
        cpu1, wall1 = time.process_time(), time.perf_counter()
        srv1 = await _server_cpu(probe)
        n = rounds * at_once
        return {"requests": n, "router_cpu_us": 1e6 * (cpu1 - cpu0) / n,
                "server_cpu_us": 1e6 * (srv1 - srv0) / n, "wall_us": 1e6 * (wall1 - wall0) / n}
    finally:
        await store.aclose()
        await probe.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.limits_store_cost",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--at-once", type=int, default=32)
    args = p.parse_args(argv)
    r = uvloop.run(measure(args.redis_url, args.requests, args.at_once))
    print(f"{r['requests']:.0f} requests, {args.at_once} at once: router"
          f" {r['router_cpu_us']:.1f} us CPU/request, redis-server {r['server_cpu_us']:.1f} us"
          f" CPU/request, wall {r['wall_us']:.1f} us/request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
