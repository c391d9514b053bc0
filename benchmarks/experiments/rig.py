"""Start the system under test: emulated backends and the router, in-process or isolated.

:func:`serve` builds one router bucket per :class:`Pool` (its replicas are emulators of the
pool's artifact) and yields a :class:`Stack` with the router's URL. Two arrangements:

* ``isolate=True`` (the full run): each pool's emulators run in one ``lpu-emulator``
  subprocess and the router in an ``lpu-router serve`` subprocess, so the load generator
  (this process) does not share an event loop with what it measures. On a 2-core machine
  the three processes still share the cores.
* ``isolate=False`` (quick runs, CI): everything in this process's event loop, started with
  :func:`lpu_emulator.server.start_emulators` and :func:`router.app.build_app`.

Every server binds 127.0.0.1 on an ephemeral port (subprocesses print the address they got,
which is how :mod:`benchmarks.processes` knows they are up; each one's stderr goes to a log
file in a temporary folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from benchmarks.experiments import SweepConfig
from benchmarks.processes import Service, start, url_in
from lpu_emulator.lengths import OutputLength
from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import Artifact
from router.app import build_app
from router.config import parse_config
from router.server import running

__all__ = ["Pool", "Stack", "bucket_snapshot", "router_config", "serve", "to_toml"]

_START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Pool:
    """One router bucket and the emulated replicas behind it."""

    name: str
    artifact: Artifact
    replicas: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    """Extra ``[[buckets]]`` keys, e.g. ``ttft_slo_s``, ``max_concurrency``."""
    output_length: OutputLength = field(default_factory=OutputLength)
    """How many tokens the emulators make (default: the whole allowance)."""
    seed: int = 0
    """The emulators' seed (output lengths of requests without their own seed)."""


@dataclass(frozen=True, slots=True)
class Stack:
    url: str
    """Where the load goes: the router (or the first emulator when there is no router)."""
    backends: dict[str, list[str]]
    """Emulator base URLs by pool name."""
    pids: tuple[int, ...] = ()
    """The processes serving it (``isolate=True``; in-process: none, it is this one)."""


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float | str):
        return json.dumps(v)  # JSON numbers and basic strings are valid TOML
    if isinstance(v, Sequence):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def to_toml(raw: Mapping[str, Any]) -> str:
    """TOML text for a mapping of tables, arrays of tables and plain values (config files)."""
    lines: list[str] = []

    def table(path: str, d: Mapping[str, Any]) -> None:
        nested: list[tuple[str, Any]] = []
        for k, v in d.items():
            is_tables = isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v)
            if isinstance(v, Mapping) or is_tables:
                nested.append((k, v))
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in nested:
            sub = f"{path}.{k}" if path else k
            if isinstance(v, Mapping):
                lines.append(f"\n[{sub}]")
                table(sub, v)
            else:
                for item in v:
                    lines.append(f"\n[[{sub}]]")
                    table(sub, item)

    table("", raw)
    return "\n".join(lines).lstrip() + "\n"


def router_config(pools: Sequence[Pool], backends: Mapping[str, list[str]],
                  admission: Mapping[str, Any]) -> dict[str, Any]:
    """The router's raw config: one bucket per pool, its shape spelled out from the artifact."""
    return {
        "server": {"host": "127.0.0.1", "port": 0, "max_retries": 0},
        "health": {"interval_s": 1.0},
        "admission": dict(admission),
        "buckets": [
            {"name": p.name, "model": p.artifact.model, "backends": backends[p.name],
             "max_seq_len": p.artifact.max_seq_len,
             "max_output_tokens": p.artifact.max_output_tokens, "slots": p.artifact.slots,
             "prefill_ms": p.artifact.prefill_s * 1e3,
             "per_token_ms": p.artifact.per_token_s * 1e3, **p.options}
            for p in pools
        ],
    }


async def _ready(url: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready after {_START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.05)


async def _start(cmd: list[str], name: str, ready_lines: int, log: Path) -> Service:
    """:func:`benchmarks.processes.start` off the loop (it blocks until the process printed
    its ``ready_lines`` address lines); its stderr goes to ``log``."""
    return await asyncio.to_thread(start, cmd, name=name, ready_lines=ready_lines,
                                   timeout_s=_START_TIMEOUT_S, stderr=log)


@contextlib.asynccontextmanager
async def _isolated(cfg: SweepConfig, pools: Sequence[Pool], admission: Mapping[str, Any] | None
                    ) -> AsyncIterator[Stack]:
    procs: list[Service] = []
    with tempfile.TemporaryDirectory(prefix="lpu-sweep-") as tmp:
        work = Path(tmp)
        try:
            backends: dict[str, list[str]] = {}
            for p in pools:
                art = work / f"{p.name}.toml"
                art.write_text(to_toml({"artifact": p.artifact.to_dict()}))
                length = p.output_length
                # It prints one "lpu-emulator: ... at http://127.0.0.1:PORT/v1" per replica.
                proc = await _start([sys.executable, "-m", "lpu_emulator", "--artifact", str(art),
                                     "--port", "0", "--replicas", str(p.replicas),
                                     "--tick-ms", str(cfg.tick_s * 1e3),
                                     "--output-length", length.kind,
                                     "--output-min", str(length.low),
                                     *(["--output-max", str(length.high)] if length.high else []),
                                     "--output-mean", str(length.mean), "--seed", str(p.seed)],
                                    f"emulator-{p.name}", p.replicas, work / f"{p.name}.log")
                procs.append(proc)
                backends[p.name] = [url_in(line) for line in proc.lines]
            if admission is None:
                yield Stack(backends[pools[0].name][0], backends,
                            tuple(p.pid for p in procs))
                return
            conf = work / "router.toml"
            conf.write_text(to_toml(router_config(pools, backends, admission)))
            router = await _start([sys.executable, "-m", "router", "--log-level", "WARNING",
                                   "serve", str(conf)], "router", 1, work / "router.log")
            procs.append(router)
            url = url_in(router.lines[0])  # "lpu-router serving on http://127.0.0.1:PORT"
            await _ready(url)
            yield Stack(url, backends, tuple(p.pid for p in procs))
        finally:
            # Synchronous (it blocks for the shut-down only): an await here could be
            # cancelled and leave a process behind.
            for proc in reversed(procs):
                proc.stop()


@contextlib.asynccontextmanager
async def _in_process(cfg: SweepConfig, pools: Sequence[Pool],
                      admission: Mapping[str, Any] | None) -> AsyncIterator[Stack]:
    async with contextlib.AsyncExitStack() as stack:
        backends: dict[str, list[str]] = {}
        for p in pools:
            options = EmulatorOptions(p.artifact, tick_s=cfg.tick_s,
                                      output_length=p.output_length, seed=p.seed)
            backends[p.name] = await stack.enter_async_context(
                start_emulators(options, replicas=p.replicas))
        if admission is None:
            yield Stack(backends[pools[0].name][0], backends)
            return
        config = parse_config(router_config(pools, backends, admission), "<sweep>")
        url = await stack.enter_async_context(
            running(build_app(config, registry=CollectorRegistry())))
        yield Stack(url, backends)


async def bucket_snapshot(url: str, bucket: str) -> dict[str, Any]:
    """The router's ``GET /admin/buckets`` entry for ``bucket`` (timeline mode, no admin key)."""
    async with aiohttp.ClientSession() as s, s.get(url + "/admin/buckets") as r:
        r.raise_for_status()
        doc: dict[str, Any] = await r.json()
    return dict(doc["buckets"][bucket])


@contextlib.asynccontextmanager
async def serve(cfg: SweepConfig, pools: Sequence[Pool],
                admission: Mapping[str, Any] | None = None) -> AsyncIterator[Stack]:
    """Emulators for ``pools`` and, unless ``admission`` is None, the router in front of them
    with that ``[admission]`` table. The arrangement follows ``cfg.isolate``."""
    if not pools:
        raise ValueError("serve needs at least one pool")
    factory = _isolated if cfg.isolate else _in_process
    async with factory(cfg, pools, admission) as stack:
        yield stack
