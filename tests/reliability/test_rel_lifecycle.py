"""SIGTERM drains (``lpu-router serve`` as a subprocess); SIGHUP reloads without dropping
requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from stack import MODEL, chat, emulator_options

from lpu_emulator.server import start_emulators

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _toml(backends: list[str], *, drain_s: float, extra_model: bool = False,
          broken: bool = False) -> str:
    urls = ", ".join(f'"{u}"' for u in backends)
    text = f"""
[server]
host = "127.0.0.1"
port = 0
drain_s = {drain_s}
[admission]
mode = "off"
[health]
interval_s = 0.2
[[buckets]]
name = "short"
model = "{MODEL}"
artifact = "llama-3.1-8b-2k"
backends = [{urls}]
"""
    if extra_model:
        text += f"""
[[buckets]]
name = "other"
model = "reloaded-model"
upstream_model = "{MODEL}"
artifact = "llama-3.1-8b-2k"
backends = [{urls}]
"""
    return text + ("nonsense_key = 1\n" if broken else "")


@contextlib.asynccontextmanager
async def _router(config: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "--log-level", "INFO", "serve", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("lpu-router serving on http://"), line
        yield proc, int(line.strip().rsplit(":", 1)[1])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _stream(port: int, body: dict[str, object]
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Type: "
                 b"application/json\r\nContent-Length: " + str(len(payload)).encode()
                 + b"\r\n\r\n" + payload)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


async def _rest(reader: asyncio.StreamReader) -> bytes:
    """The rest of a chunked body, up to its terminating chunk."""
    data = b""
    async with asyncio.timeout(15):
        while not data.endswith(b"\r\n0\r\n\r\n"):
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    return data


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    """Status line, headers and body of one GET on a kept-alive connection."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n")
                  if h.lower().startswith(b"content-length:"))
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def test_sigterm_drains_then_ends_streams_cleanly(tmp_path: Path) -> None:
    async with start_emulators(emulator_options(time_scale=1.0)) as urls:
        cfg = tmp_path / "router.toml"
        cfg.write_text(_toml(urls, drain_s=0.8))
        async with _router(cfg) as (proc, port):
            idle = await asyncio.open_connection("127.0.0.1", port)
            assert (await _get(*idle, "/readyz")).startswith(b"HTTP/1.1 200")
            short = await _stream(port, chat(60, stream=True))  # ~0.2 s: finishes
            long = await _stream(port, chat(1000, stream=True))  # ~1.9 s: past the deadline
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            assert b'"shutting_down": true' in await _get(*idle, "/readyz")
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            done = await _rest(short[0])
            assert b"data: [DONE]" in done and b'"error"' not in done
            cut = await _rest(long[0])
            assert b'"error"' in cut and b"shutting down" in cut
            assert cut.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")  # a clean chunked end
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            for _, w in (idle, short, long):
                w.close()


async def test_sighup_reloads_without_dropping_in_flight(tmp_path: Path) -> None:
    async with start_emulators(emulator_options(time_scale=1.0)) as urls:
        cfg = tmp_path / "router.toml"
        cfg.write_text(_toml(urls, drain_s=5.0))
        async with _router(cfg) as (proc, port):
            other = {**chat(4), "model": "reloaded-model"}
            in_flight = await _stream(port, chat(400, stream=True))  # ~0.8 s
            cfg.write_text(_toml(urls, drain_s=5.0, broken=True))
            proc.send_signal(signal.SIGHUP)  # invalid: refused, still serving
            await asyncio.sleep(0.2)
            cfg.write_text(_toml(urls, drain_s=5.0, extra_model=True))
            proc.send_signal(signal.SIGHUP)
            status = b""
            for _ in range(50):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                payload = json.dumps(other).encode()
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Length: "
                             + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n"
                             + payload)
                status = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                # The new bucket routes it (under MODEL, the name the emulator serves: a
                # replica reporting another model than its bucket's is not admitted to).
                if b"x-lpu-bucket: other" in status:
                    break
                await asyncio.sleep(0.05)
            assert b"x-lpu-bucket: other" in status, status
            rest = await _rest(in_flight[0])
            assert b"data: [DONE]" in rest and b'"error"' not in rest
            in_flight[1].close()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
            assert proc.stderr is not None
            log = (await proc.stderr.read()).decode()
            assert "reload refused" in log and "nonsense_key" in log
