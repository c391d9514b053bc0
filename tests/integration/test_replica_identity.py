"""Per-replica identity, live: real emulators report their artifact on /load and /v1/models,
the router keeps it per replica (info metric, /admin/backends) and refuses to admit to a
replica whose artifact does not fit its bucket's shape."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import aiohttp
from stack import (
    ARTIFACT,
    SCALE,
    StartEmulators,
    chat,
    client_session,
    emulator_options,
    router,
    router_raw,
)

from lpu_protocol.artifact import builtin_artifact
from router.app import POOL

WRONG = "llama-3.1-8b-8k"  # an 8K artifact behind the rig's 2K bucket


async def _until(check: Callable[[], bool], within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def _served(session: aiohttp.ClientSession, url: str) -> float:
    """Requests ``url`` (an emulator) completed, from its own /metrics."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


async def test_wrong_shape_replica_gets_no_request(emulators: StartEmulators) -> None:
    options = emulator_options(time_scale=SCALE, slots=2)
    [good] = await emulators(options)
    wrong = dataclasses.replace(options, artifact=dataclasses.replace(
        builtin_artifact(WRONG), slots=2))
    [bad] = await emulators(wrong)
    raw = router_raw([good, bad], slots=2, ttft_slo_s=5.0,
                     admission={"load_poll_interval_s": 0.02})
    async with router(raw) as r, client_session() as session:
        pool = r.app[POOL]
        await _until(lambda: pool.replica("small", bad).mismatch is not None)
        assert "max_seq_len 8192 != bucket's 2048" in (pool.replica("small", bad).mismatch or "")
        assert r.metric("lpu_router_backend_shape_mismatch",
                        {"bucket": "small", "backend": bad}) == 1
        assert r.metric("lpu_router_backend_shape_mismatch",
                        {"bucket": "small", "backend": good}) == 0

        for _ in range(6):
            async with session.post(r.url + "/v1/chat/completions", json=chat(4)) as resp:
                assert resp.status == 200, await resp.text()
        assert await _served(session, good) == 6
        assert await _served(session, bad) == 0

        async with session.get(r.url + "/admin/backends") as resp:
            rows = {row["url"]: row for row in (await resp.json())["backends"]}
        art = options.artifact  # the rig's 2-slot copy: its own digest
        assert art.name == ARTIFACT and art.digest != builtin_artifact(ARTIFACT).digest
        ident = rows[good]["identity"]
        assert (ident["artifact"], ident["version"], ident["compiler_version"],
                ident["precision"], ident["target"], ident["digest"]) == (
            art.name, art.version, art.compiler_version, art.precision, art.target, art.digest)
        assert ident["per_token_s"] == art.per_token_s * SCALE
        assert rows[good]["shape_mismatch"] is None and rows[good]["up"]
        assert rows[bad]["identity"]["artifact"] == WRONG and not rows[bad]["up"]
        info = {"bucket": "small", "backend": good, "artifact": art.name,
                "version": art.version, "compiler": art.compiler_version, "digest": art.digest}
        assert r.metric("lpu_router_backend_artifact_info", info) == 1

        async with session.get(good + "/v1/models") as resp:
            entry = (await resp.json())["data"][0]
        assert entry["digest"] == art.digest and entry["compiler_version"] == art.compiler_version


async def test_no_fitting_replica_left_is_no_backend(emulators: StartEmulators) -> None:
    wrong = dataclasses.replace(emulator_options(time_scale=SCALE, slots=2),
                                artifact=dataclasses.replace(builtin_artifact(WRONG), slots=2))
    [bad] = await emulators(wrong)
    raw = router_raw([bad], slots=2, ttft_slo_s=5.0, admission={"load_poll_interval_s": 0.02})
    async with router(raw) as r, client_session() as session:
        await _until(lambda: r.app[POOL].replica("small", bad).mismatch is not None)
        async with session.post(r.url + "/v1/chat/completions", json=chat(4)) as resp:
            assert resp.status == 503
            assert resp.headers["x-lpu-reject-reason"] == "no_backend"
        assert await _served(session, bad) == 0
