"""Configs and raw HTTP exchanges for the listener, drain and reload tests, which run
``lpu-router serve`` as a real subprocess (:func:`live_processes.served_router`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from live_processes import Served, served_router
from reliability_harness import ARTIFACT, MODEL

__all__ = ["Served", "config_toml", "http_exchange", "served_router"]


def config_toml(backends: list[str], *, server: dict[str, Any] | None = None,
                bucket: dict[str, Any] | None = None) -> str:
    """One bucket ``short`` of MODEL over ``backends``, admission ``off``, on port 0."""
    def table(values: dict[str, Any]) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    return ("[server]\n" + table({"host": "127.0.0.1", "port": 0, **(server or {})})
            + "[admission]\nmode = \"off\"\n[health]\ninterval_s = 0.2\n"
            + "[[buckets]]\n" + table({"name": "short", "model": MODEL, "artifact": ARTIFACT,
                                       "backends": backends, **(bucket or {})}))


def post_bytes(body: dict[str, Any] | bytes, *, path: str = "/v1/chat/completions",
               extra: str = "") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}\r\n").encode() + data


async def http_exchange(port: int, request: bytes, *, timeout_s: float = 15.0) -> bytes:
    """Send ``request`` on a new connection and read until the router closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
