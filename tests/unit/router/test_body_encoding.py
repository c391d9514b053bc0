"""Bounded decoding of compressed request bodies (router.body_encoding)."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest
from aiohttp import web

from lpu_protocol.openai_api import APIError
from router.body_encoding import SLICE_BYTES, decoded

BODY = b'{"model":"m","messages":[{"role":"user","content":"' + b"hello " * 5000 + b'"}]}'


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(("encoding", "packed"), [
    ("gzip", gzip.compress(BODY)),
    ("x-gzip", gzip.compress(BODY)),
    ("GZip ", gzip.compress(BODY)),
    ("deflate", zlib.compress(BODY)),
    ("deflate", _raw_deflate(BODY)),
    ("identity", BODY),
], ids=["gzip", "x-gzip", "case-and-space", "deflate-zlib", "deflate-raw", "identity"])
async def test_decodes_what_clients_send(encoding: str, packed: bytes) -> None:
    taken: list[int] = []
    assert await decoded(packed, encoding, 1 << 20, taken.append) == BODY
    assert sum(taken) == (len(BODY) if encoding != "identity" else 0)


@pytest.mark.parametrize(("encoding", "packed", "status", "code"), [
    ("br", b"anything", 415, "unsupported_content_encoding"),
    ("gzip", b"not gzip at all", 400, "invalid_content_encoding"),
    ("gzip", gzip.compress(BODY)[:-20], 400, "invalid_content_encoding"),
], ids=["unknown-encoding", "garbage", "truncated"])
async def test_refuses_what_it_cannot_decode(encoding: str, packed: bytes, status: int,
                                             code: str) -> None:
    with pytest.raises(APIError) as exc:
        await decoded(packed, encoding, 1 << 20, lambda n: None)
    assert (exc.value.status, exc.value.code) == (status, code)


async def test_a_bomb_stops_at_the_limit_in_slices_with_the_loop_turning() -> None:
    """200 MB of one byte in ~200 KB: refused at the limit, never inflated whole, and other
    tasks run between slices."""
    bomb = gzip.compress(b"a" * (200 << 20), 9)
    limit = 4 << 20
    turns = 0
    taken: list[int] = []

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    with pytest.raises(web.HTTPRequestEntityTooLarge):
        await decoded(bomb, "gzip", limit, taken.append)
    task.cancel()
    assert sum(taken) <= limit  # what was kept never passed the limit
    assert max(taken) <= SLICE_BYTES
    assert turns >= limit // SLICE_BYTES  # the loop turned between slices


async def test_the_budget_can_refuse_while_decoding() -> None:
    class Full(Exception):
        pass

    def take(n: int) -> None:
        raise Full

    with pytest.raises(Full):
        await decoded(gzip.compress(BODY), "gzip", 1 << 20, take)
