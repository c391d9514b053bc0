"""The reference relay: what aiohttp itself costs as a proxy, and nothing else.

    python3 -m benchmarks.overhead.relay_reference UPSTREAM_URL

prints ``relay serving on http://127.0.0.1:PORT`` and relays every request to the upstream:
an aiohttp server (no access log), one ``ClientSession``, the answer copied with ``iter_any``.
No parsing, no header hygiene, no admission: the floor a router on aiohttp is measured against.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with request.app[SESSION].request(request.method, request.path_qs, data=body,
                                            headers=headers) as upstream:
        resp = web.StreamResponse(status=upstream.status, headers={
            "Content-Type": upstream.headers.get("Content-Type", "application/json")})
        await resp.prepare(request)
        async for chunk in upstream.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def main(upstream: str) -> None:
    async with aiohttp.ClientSession(upstream, connector=aiohttp.TCPConnector(limit=0)) as s:
        app = web.Application()
        app[SESSION] = s
        app.router.add_route("*", "/{tail:.*}", relay)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"relay serving on http://127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
