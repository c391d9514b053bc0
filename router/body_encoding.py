"""A request body's ``Content-Encoding``, undone by the router within a bound.

aiohttp would decompress a client's gzip body itself, all of it, inside one callback of the
event loop: a 200 KB gzip bomb (200 MB of one byte) stalled the loop for 1.1 s before the size
limit was even looked at. The router therefore reads bodies as they came (``auto_decompress``
off, :func:`router.listener.handler_kwargs`) and :func:`decoded` decompresses them here:

* at most ``max_bytes`` of output (``server.max_body_bytes``, the same limit as a plain body):
  one byte more and the request gets 413 ``request_too_large``, without inflating the rest;
* in slices of :data:`SLICE_BYTES` of output with a loop turn between them, so no request stalls
  the loop for longer than one slice takes (~1 ms) and a client that left stops costing at the
  next slice (its handler is cancelled there);
* ``gzip``, ``x-gzip`` and ``deflate`` (zlib or raw); ``identity`` or none is the body as it is;
  any other encoding is 415 ``unsupported_content_encoding``; a body that does not decode is 400.

The decoded body is what the router forwards (without a ``Content-Encoding`` header: see
``router.relay``), so a backend never gets a body in a different encoding than its header says.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

from aiohttp import web

from lpu_protocol.openai_api import APIError

__all__ = ["SLICE_BYTES", "decoded"]

SLICE_BYTES = 256 * 1024
"""Output bytes inflated per loop turn."""
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
          "deflate": zlib.MAX_WBITS}


def _unsupported(encoding: str) -> APIError:
    return APIError(415, f"Unsupported Content-Encoding {encoding[:64]!r}: send the body as it"
                    " is, or gzip or deflate.", code="unsupported_content_encoding")


def _undecodable(encoding: str) -> APIError:
    return APIError(400, f"The request body is not valid {encoding} data.",
                    code="invalid_content_encoding")


async def decoded(body: bytes, encoding: str | None, max_bytes: int,
                  take: Callable[[int], None]) -> bytes:
    """``body`` with ``encoding`` undone, at most ``max_bytes`` long.

    ``take(n)`` is called for every ``n`` bytes of output before they are kept (the body
    memory budget; it raises to refuse). Raises aiohttp's 413 past ``max_bytes``, a 415 for an
    encoding it does not know and 400 for data that does not decode (both :class:`APIError`).
    """
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    wbits = _WBITS.get(name)
    if wbits is None:
        raise _unsupported(name)
    inflate = zlib.decompressobj(wbits)
    if name == "deflate" and body[:1] and (body[0] & 0x0F) != 8:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate: no zlib header
    out: list[bytes] = []
    size = 0
    pending = body
    try:
        while pending or not inflate.eof:
            piece = inflate.decompress(pending, SLICE_BYTES)
            pending = inflate.unconsumed_tail
            if not piece and not pending:
                break
            size += len(piece)
            if size > max_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size)
            take(len(piece))
            out.append(piece)
            if pending:
                await asyncio.sleep(0)
    except zlib.error:
        raise _undecodable(name) from None
    if not inflate.eof:
        raise _undecodable(name)
    return b"".join(out)
