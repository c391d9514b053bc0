"""Spill through the real router and emulators: a short bucket at twice its capacity, a medium
bucket idle; the short requests the short bucket refuses spill to medium.

Short: the 2K artifact at time scale 0.5 with 2 slots (prefill 40 ms, 16-token requests hold a
slot D = 53.4 ms: 37.5 requests/s), TTFT SLO 4 x prefill = 160 ms. Medium: the 8K artifact at
the same scale (8 slots, prefill 95 ms: inside the short SLO while its queue is short), spill
share 0.5 (4 of its 8 slots). Poisson arrivals at twice short's capacity for 3 s, all short.

What holds, read from the emulators' recorded schedules (their own times, never measured):
every admitted request's first token was scheduled within the short SLO of its arrival where it
ran (and within the deadline the router sent); every answer names the bucket that served it
(``x-lpu-bucket``) and where it spilled from (``x-lpu-spilled-from``), and ran on that bucket's
emulator; ``lpu_router_spills_total{from="short",to="medium"}`` counts exactly the spilled
answers, and the padding counters add up the shape tokens each answer left unused.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from open_loop import Planned, open_loop, poisson_times
from recorded_schedule import fifo_problems, late_problems, recorded
from stack import (
    MODEL,
    SCALE,
    assert_settled,
    chat,
    client_session,
    rig_emulators,
    router,
    service_s,
)

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact
from router.app import ADMITTER
from router.attempts import padding_tokens
from router.config import parse_config

SHORT, MEDIUM = "llama-3.1-8b-2k", "llama-3.1-8b-8k"
SLOTS = 2
TOKENS = 16
CAPACITY = SLOTS / service_s(TOKENS)
SLO = 4 * builtin_artifact(SHORT).prefill_s * SCALE
DURATION_S = 3.0


def _raw(short: list[str], medium: list[str]) -> dict[str, Any]:
    return {
        "health": {"interval_s": 0.5},
        "admission": {"mode": "timeline"},
        "buckets": [
            {"name": "short", "model": MODEL, "artifact": SHORT, "slots": SLOTS,
             "time_scale": SCALE, "backends": short, "ttft_slo_s": SLO},
            {"name": "medium", "model": MODEL, "artifact": MEDIUM, "time_scale": SCALE,
             "backends": medium, "ttft_slo_s": 4 * builtin_artifact(MEDIUM).prefill_s * SCALE,
             "spill_share": 0.5},
        ],
    }


async def test_short_overload_spills_to_an_idle_medium_bucket() -> None:
    medium_options = EmulatorOptions(artifact=builtin_artifact(MEDIUM), time_scale=SCALE,
                                     tick_s=0.002)
    async with (
        rig_emulators(slots=SLOTS) as short_urls,
        start_emulators(medium_options, replicas=1) as medium_urls,
        router(_raw(short_urls, medium_urls)) as r,
        client_session() as session,
    ):
        plan = [Planned(t, "standard", chat(TOKENS))
                for t in poisson_times(2 * CAPACITY, DURATION_S, seed=3)]
        shots = await open_loop(session, r.url, plan)
        await assert_settled(r)  # admitted == finished per bucket, nothing left in flight
        snapshot = r.app[ADMITTER].snapshot()["buckets"]
        schedules = await recorded(short_urls + medium_urls)
        spills = r.metric("lpu_router_spills_total", {"from": "short", "to": "medium"})
        padding = {(b, k): r.metric("lpu_router_padding_tokens_total", {"bucket": b, "kind": k})
                   for b in ("short", "medium") for k in ("prompt", "allowance")}

    admitted = [s for s in shots if s.admitted]
    refused = [s for s in shots if s.status == 429]
    assert len(admitted) + len(refused) == len(shots), Counter(s.status for s in shots)
    served = Counter(s.headers["x-lpu-bucket"] for s in admitted)
    spilled = [s for s in admitted if "x-lpu-spilled-from" in s.headers]
    assert all(s.headers["x-lpu-spilled-from"] == "short" for s in spilled)
    assert {s.request_id for s in spilled} == {
        s.request_id for s in admitted if s.headers["x-lpu-bucket"] == "medium"}
    # Twice short's capacity: it cannot take all, medium takes part of the rest.
    assert served["short"] > 0 and served["medium"] > 0, served
    assert spills == len(spilled)
    assert snapshot["medium"]["spilled_in_flight"] == 0  # every spilled ticket gave it back

    # Each answer ran where its header says, once, within the request's (short) SLO.
    where = {e.request_id: e.backend for entries in schedules.values() for e in entries}
    buckets = {u: "short" for u in short_urls} | {u: "medium" for u in medium_urls}
    assert {s.request_id: buckets[where[s.request_id]] for s in admitted} == {
        s.request_id: s.headers["x-lpu-bucket"] for s in admitted}
    for entries in schedules.values():
        assert not late_problems(entries, SLO)
        assert not fifo_problems(entries)
        assert all(e.state == "done" for e in entries)
    assert not {s.request_id for s in refused} & set(where)

    # Padding, per the answers' usage: exactly what the counters hold.
    config = {b.name: b for b in parse_config(_raw(short_urls, medium_urls)).buckets}
    want: Counter[tuple[str, str]] = Counter()
    for s in admitted:
        usage = json.loads(s.body)["usage"]
        bucket = s.headers["x-lpu-bucket"]
        prompt, allowance = padding_tokens(config[bucket], usage["prompt_tokens"],
                                           usage["completion_tokens"])
        want[bucket, "prompt"] += prompt
        want[bucket, "allowance"] += allowance
    assert padding == {k: float(want[k]) for k in padding}
    # A spilled request pads the larger shape: more per request than in its own.
    per_request = {b: (padding[b, "prompt"] + padding[b, "allowance"]) / served[b]
                   for b in ("short", "medium")}
    assert per_request["medium"] > per_request["short"], per_request
