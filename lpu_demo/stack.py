"""``lpu-router demo``: emulated backends for a default set of buckets plus the router, in one
process and one command.

Buckets (one public model, ``llama-3.1-8b-instant``, at three compiled shapes, two emulated
replicas each): ``short`` = ``llama-3.1-8b-2k``, ``medium`` = ``llama-3.1-8b-8k``, ``long`` =
``llama-3.1-8b-32k``. Backends bind ephemeral loopback ports; the router binds ``--port``.
By default the emulated replies have geometric lengths (mean 128 tokens, clipped to the
allowance ``max_tokens``), like a model that chooses when to stop; ``output_length=
OutputLength("fixed")`` (``lpu-router demo --output-length fixed``) makes every reply exactly
its allowance, the emulator's own default and what the benchmarks assume.

``workers`` > 1 (``lpu-router demo --workers N``): the emulated backends stay in this process
and the router runs as N worker processes under their supervisor (``lpu-router serve CONFIG
--workers N`` as a child process, CONFIG the demo's config written to a temporary directory;
:mod:`router.workers`), as a pod would run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lpu_emulator.lengths import OutputLength
from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact
from router.config import RouterConfig, parse_config
from router.server import serve_forever

__all__ = ["DEMO_BUCKETS", "DEMO_LENGTH", "DEMO_MODEL", "demo_config", "demo_length", "demo_raw",
           "demo_toml", "run_demo", "usage_text"]

DEMO_MODEL = "llama-3.1-8b-instant"
DEMO_BUCKETS: tuple[tuple[str, str], ...] = (
    ("short", "llama-3.1-8b-2k"),
    ("medium", "llama-3.1-8b-8k"),
    ("long", "llama-3.1-8b-32k"),
)
DEMO_LENGTH = OutputLength(kind="geometric", mean=128.0)
"""The demo's reply lengths unless told otherwise: geometric, mean 128 tokens."""


def demo_config(backends: dict[str, list[str]], *, host: str = "127.0.0.1", port: int = 8080,
                time_scale: float = 1.0, admission: str = "timeline") -> RouterConfig:
    """The demo's router config: one ``[[buckets]]`` per entry of :data:`DEMO_BUCKETS`."""
    return parse_config(demo_raw(backends, host=host, port=port, time_scale=time_scale,
                                 admission=admission), "<demo>")


def demo_raw(backends: dict[str, list[str]], *, host: str = "127.0.0.1", port: int = 8080,
             time_scale: float = 1.0, admission: str = "timeline") -> dict[str, Any]:
    """:func:`demo_config`'s mapping, as a TOML file would give it."""
    return {
        "server": {"host": host, "port": port},
        "health": {"interval_s": 1.0},
        "admission": {"mode": admission},
        "buckets": [
            {"name": name, "model": DEMO_MODEL, "artifact": artifact, "time_scale": time_scale,
             "backends": backends[name],
             "ttft_slo_s": builtin_artifact(artifact).prefill_s * time_scale * 4}
            for name, artifact in DEMO_BUCKETS
        ],
    }


def demo_toml(raw: Mapping[str, Any]) -> str:
    """``raw`` (tables of strings, numbers and lists of strings; ``buckets`` an array of
    tables) as TOML text (JSON's scalars and arrays are TOML's)."""
    def table(values: Mapping[str, Any]) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    parts = [f"[{name}]\n{table(values)}" for name, values in raw.items() if name != "buckets"]
    parts += [f"[[buckets]]\n{table(b)}" for b in raw.get("buckets", [])]
    return "\n".join(parts)


def demo_length(kind: str, mean: float = DEMO_LENGTH.mean) -> OutputLength:
    """The reply lengths ``lpu-router demo --output-length KIND --output-mean MEAN`` asks for:
    ``fixed`` = exactly the allowance, ``geometric`` = mean ``mean`` tokens clipped to it."""
    if kind not in ("fixed", "geometric"):
        raise ValueError(f"output length: expected fixed|geometric, got {kind!r}")
    return OutputLength(kind="fixed") if kind == "fixed" else OutputLength("geometric", mean=mean)


def usage_text(url: str) -> str:
    """How to point the ``openai`` client (and curl) at the router."""
    return f"""lpu-router demo: router at {url}, buckets {', '.join(b for b, _ in DEMO_BUCKETS)}

    from openai import OpenAI
    client = OpenAI(base_url="{url}/v1", api_key="unused")
    r = client.chat.completions.create(model="{DEMO_MODEL}", max_tokens=64,
        messages=[{{"role": "user", "content": "Hello!"}}])
    print(r.choices[0].message.content)

    curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{{"model": \
"{DEMO_MODEL}", "max_tokens": 32, "messages": [{{"role": "user", "content": "Hi"}}]}}'

metrics: {url}/metrics    ready: {url}/readyz    Ctrl-C stops."""


async def run_demo(*, host: str = "127.0.0.1", port: int = 8080, time_scale: float = 1.0,
                   replicas: int = 2, output_length: OutputLength = DEMO_LENGTH,
                   echo: Callable[[str], None] = print, workers: int = 1,
                   log_level: str = "INFO") -> None:
    """Start the emulated backends and the router; serve until SIGINT/SIGTERM.

    ``output_length``: how many tokens each emulated reply has (see
    :mod:`lpu_emulator.lengths`; ``fixed`` = exactly the request's allowance). ``workers``:
    the router's worker processes (1: the router runs in this process); ``log_level``: theirs.
    """
    async with contextlib.AsyncExitStack() as stack:
        backends: dict[str, list[str]] = {}
        for name, artifact in DEMO_BUCKETS:
            options = EmulatorOptions(
                artifact=builtin_artifact(artifact), time_scale=time_scale,
                output_length=output_length,
            )
            backends[name] = await stack.enter_async_context(
                start_emulators(options, replicas=replicas, host=host)
            )
        if workers > 1:
            raw = demo_raw(backends, host=host, port=port, time_scale=time_scale)
            await _serve_workers(raw, workers, log_level, echo)
            return
        config = demo_config(backends, host=host, port=port, time_scale=time_scale)
        await serve_forever(config, on_ready=lambda url: echo(usage_text(url)))


async def _serve_workers(raw: Mapping[str, Any], workers: int, log_level: str,
                         echo: Callable[[str], None]) -> None:
    """``lpu-router serve`` of ``raw`` with ``workers`` workers, as a child process, until
    SIGINT/SIGTERM (passed on to it as SIGTERM: its workers drain) or until it exits."""
    parse_config(raw, "<demo>")  # the demo's own config: an error here is the demo's bug
    with tempfile.TemporaryDirectory(prefix="lpu-demo-") as tmp:
        path = Path(tmp) / "router.toml"
        path.write_text(demo_toml(raw), "utf-8")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", "--log-level", log_level, "serve", str(path),
            "--workers", str(workers), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            assert proc.stdout is not None
            line = (await proc.stdout.readline()).decode()
            if line.startswith("lpu-router serving on "):
                echo(usage_text(line.strip().rsplit(" ", 1)[1]))
                stopped = asyncio.ensure_future(stop.wait())
                exited = asyncio.ensure_future(proc.wait())
                await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
