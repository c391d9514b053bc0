"""Canary of a compiled artifact against real emulators: a replica serving an artifact that runs 10%
slower than it declares (the emulator's ``actual_prefill_factor`` and ``actual_per_token_factor``
1.1; it declares the stable artifact's timings),
share 0.1, is rolled back automatically within the bound the rule states, with no TTFT SLO
violation among admitted requests on the recorded schedules; clear resumes it, promote ends it.

The bound, stated before the run from the rule (:mod:`router.canary`): every canary request's
TTFT is ~10% of the prefill (24 ms at time scale 3) later than predicted, beyond
``max_prediction_error_ms`` = 18 (the stable replicas' p90 is ~5 here, and noise on a busy machine
only adds to both: 13 ms of room for the stable ones, the canary's never below 24), so the
rollback comes at the ``min_requests``-th (10th) canary first token; at most ``CLIENTS`` - 1
more canary requests can be in flight then, so the canary emulator's schedule holds 10 to
10 + ``CLIENTS`` - 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact
from tests.recorded_schedule import late_problems, recorded
from tests.stack import ARTIFACT, MODEL, Stack, assert_settled, router

SCALE = 3.0
SLOW = 1.1
"""The canary emulator's real timings over its declared ones: 10% slower."""
CANARY_VERSION = "2026.12.0-canary"
MIN_REQUESTS = 10
BOUND_MS = 18.0
"""``max_prediction_error_ms``: between the stable replicas' error and the canary's."""
CLIENTS = 3
TTFT_SLO_S = 0.5
STABLE_VERSION = builtin_artifact(ARTIFACT).version

pytestmark = pytest.mark.timeout(90)


@contextlib.asynccontextmanager
async def canary_stack() -> AsyncIterator[tuple[Stack, list[str], str]]:
    art = builtin_artifact(ARTIFACT)
    stable = EmulatorOptions(artifact=art, time_scale=SCALE, tick_s=0.001)
    slow = dataclasses.replace(stable, artifact=dataclasses.replace(art, version=CANARY_VERSION),
                               actual_prefill_factor=SLOW, actual_per_token_factor=SLOW)
    async with start_emulators(stable, replicas=2) as stable_urls, \
            start_emulators(slow, replicas=1) as (canary_url,):
        raw: dict[str, Any] = {
            "health": {"interval_s": 0.5},
            "admission": {"mode": "timeline", "load_poll_interval_s": 0.05},
            "buckets": [{
                "name": "small", "model": MODEL, "artifact": ARTIFACT, "time_scale": SCALE,
                "backends": [*stable_urls, canary_url], "ttft_slo_s": TTFT_SLO_S,
                "stable_version": STABLE_VERSION,
                "canary": {"version": CANARY_VERSION, "share": 0.1,
                           "max_prediction_error_ms": BOUND_MS, "max_error_rate": 0.05,
                           "min_requests": MIN_REQUESTS},
            }],
        }
        async with router(raw) as stack:
            yield stack, stable_urls, canary_url


async def _stream(s: aiohttp.ClientSession, url: str) -> None:
    body = {"model": MODEL, "max_tokens": 8, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    async with s.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for _ in r.content.iter_any():
            pass


async def _load(stack: Stack, requests: int) -> None:
    """``requests`` streamed completions from ``CLIENTS`` closed-loop clients."""
    left = iter(range(requests))
    async with aiohttp.ClientSession() as s:
        async def client() -> None:
            for _ in left:
                await _stream(s, stack.url)
        await asyncio.gather(*(client() for _ in range(CLIENTS)))


async def _canary_json(stack: Stack) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(stack.url + "/admin/buckets") as r:
        doc: dict[str, Any] = (await r.json())["buckets"]["small"]["canary"]
        return doc


async def _post(stack: Stack, path: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.post(stack.url + path) as r:
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc


def _gauge(text: str) -> float | None:
    m = re.search(r'^lpu_router_canary_state\{bucket="small"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


async def test_slow_canary_rolled_back_within_the_stated_bound() -> None:
    async with canary_stack() as (stack, stable_urls, canary_url):
        await _load(stack, 120)
        doc = await _canary_json(stack)
        assert doc["state"] == "rolled_back", doc
        assert "prediction error" in doc["reason"], doc
        on_canary = len((await recorded([canary_url]))[canary_url])
        assert MIN_REQUESTS <= on_canary <= MIN_REQUESTS + CLIENTS - 1, (on_canary, doc)
        stable_p = doc["by_role"]["stable"]["prediction_error_ms_quantile"]
        canary_p = doc["by_role"]["canary"]["prediction_error_ms_quantile"]
        assert stable_p < BOUND_MS < canary_p, doc  # the bound tells the two artifacts apart

        # Stopped: more load, and none of it reaches the canary.
        await _load(stack, 40)
        assert len((await recorded([canary_url]))[canary_url]) == on_canary
        schedules = await recorded([*stable_urls, canary_url])
        entries = [e for es in schedules.values() for e in es]
        assert len(entries) == 160
        assert late_problems(entries, TTFT_SLO_S) == []
        text = await assert_settled(stack)
        assert _gauge(text) == 0.0

        # Cleared: a fresh comparison, traffic reaches the canary again.
        cleared = await _post(stack, "/admin/buckets/small/canary/clear")
        assert cleared["state"] == "active" and cleared["admitted"] == 0, cleared
        await _load(stack, 20)
        assert len((await recorded([canary_url]))[canary_url]) == on_canary + 2

        # Promoted: the canary's version is the stable one, the split ends.
        promoted = await _post(stack, "/admin/buckets/small/canary/promote")
        assert (promoted["state"], promoted["stable_version"]) == ("none", CANARY_VERSION)
        text = await assert_settled(stack)
        assert _gauge(text) is None
