"""Real emulators on loopback behind the real router, for the router's integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact
from router.app import build_app
from router.config import parse_config
from router.server import running

MODEL = "llama-3.1-8b-instant"
TIME_SCALE = 0.05


@dataclass
class Stack:
    url: str
    backends: dict[str, list[str]]
    registry: CollectorRegistry

    def metric(self, name: str, labels: dict[str, str]) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def router_stack(*, time_scale: float = TIME_SCALE, replicas: int = 2,
                       extra: dict[str, Any] | None = None) -> AsyncIterator[Stack]:
    """short (2k) and medium (8k) buckets of one model, admission off, emulators behind."""
    async with contextlib.AsyncExitStack() as stack:
        backends: dict[str, list[str]] = {}
        for name, artifact in (("short", "llama-3.1-8b-2k"), ("medium", "llama-3.1-8b-8k")):
            options = EmulatorOptions(artifact=builtin_artifact(artifact), time_scale=time_scale)
            backends[name] = await stack.enter_async_context(
                start_emulators(options, replicas=replicas))
        raw: dict[str, Any] = {
            "admission": {"mode": "off"},
            "health": {"interval_s": 0.2},
            "buckets": [
                {"name": name, "model": MODEL, "artifact": artifact, "time_scale": time_scale,
                 "backends": backends[name]}
                for name, artifact in (("short", "llama-3.1-8b-2k"),
                                       ("medium", "llama-3.1-8b-8k"))
            ],
        }
        for key, value in (extra or {}).items():
            raw[key] = value
        registry = CollectorRegistry()
        url = await stack.enter_async_context(
            running(build_app(parse_config(raw), registry=registry)))
        yield Stack(url, backends, registry)


async def emulator_metric(base: str, name: str) -> float:
    """One un-labelled sample from an emulator's /metrics (0 when absent)."""
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
