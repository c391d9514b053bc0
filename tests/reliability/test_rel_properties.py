"""Property-based tests (hypothesis) over the request parser, bucketing and the admission rule."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpu_protocol.artifact import Timings
from lpu_protocol.openai_api import APIError, parse_request
from router.admission import Priority, Refused, Terms
from router.admission.decision import Inputs, judge
from router.admission.settings import DEFAULT_PRIORITY_RULES, BucketPolicy, ReplicaShape
from router.bucket_config import BucketConfig, OverCap
from router.buckets import BucketTable
from router.errors import Rejection
from router.outcomes import RejectReason

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "stream",
          "stream_options", "temperature", "top_p", "n", "best_of", "seed", "service_tier",
          "user", "tools", "logprobs", "bogus"]
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "wizard", ""]) | json_values},
    optional={"content": json_values | st.text(), "name": json_values},
)
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8) | st.fixed_dictionaries(
    {"model": st.text(max_size=8), "messages": st.lists(message, max_size=3)},
    optional={"max_tokens": st.integers(), "stream": json_values, "temperature": json_values},
)


def _check(raw: bytes, kind: str) -> None:
    try:
        req = parse_request(raw, kind)  # type: ignore[arg-type]
    except APIError as exc:
        assert 400 <= exc.status < 500
        assert set(exc.body()["error"]) == {"message", "type", "param", "code"}
        json.loads(exc.to_json())
        return
    assert req.model and isinstance(req.model, str)
    assert req.max_tokens is None or req.max_tokens >= 1
    assert isinstance(req.stream, bool)
    assert req.kind == "chat" or req.messages == ()


@FAST
@given(body=bodies, kind=st.sampled_from(["chat", "completion"]))
def test_parser_only_raises_api_errors_on_objects(body: dict[str, Any], kind: str) -> None:
    _check(json.dumps(body).encode(), kind)


@FAST
@given(raw=st.binary(max_size=200), kind=st.sampled_from(["chat", "completion"]))
def test_parser_only_raises_api_errors_on_bytes(raw: bytes, kind: str) -> None:
    _check(raw, kind)


def _bucket(name: str, seq: int, cap: int, over: OverCap) -> BucketConfig:
    policy = BucketPolicy(name, (ReplicaShape("http://b", 8, 0.1, 0.001),), ttft_slo_s=1.0)
    return BucketConfig(name, "m", ("http://b",), seq, cap, cap, policy, over)


shapes = st.lists(
    st.tuples(st.integers(2, 40000), st.floats(0.05, 0.95), st.sampled_from(list(OverCap))),
    min_size=1, max_size=4,
)


@FAST
@given(shapes=shapes, prompt=st.integers(0, 50000),
       requested=st.none() | st.integers(1, 100000), margin=st.sampled_from([0.0, 0.03]))
def test_placement_fits_or_refuses_clearly(shapes: list[tuple[int, float, OverCap]], prompt: int,
                                           requested: int | None, margin: float) -> None:
    buckets = [_bucket(f"b{i}", seq, max(1, min(seq - 1, int(seq * frac))), over)
               for i, (seq, frac, over) in enumerate(shapes)]
    table = BucketTable(buckets, margin=margin)
    try:
        p = table.place("m", prompt, requested)
    except Rejection as r:
        assert r.reason in (RejectReason.CONTEXT_LENGTH, RejectReason.MAX_TOKENS_CAP)
        assert r.error.status == 400
        return
    b = p.bucket
    assert 1 <= p.max_tokens <= b.max_output_tokens
    assert table.need(prompt) + p.max_tokens <= b.max_seq_len
    if requested is not None:
        assert p.max_tokens <= requested
        assert (p.clamped_from is not None) == (p.max_tokens < requested)
    assert table.need(prompt) >= prompt
    with_margin = math.ceil(prompt * (1 + margin)) if margin else prompt
    assert table.need(prompt) == with_margin


def _inputs(d: dict[str, Any]) -> Inputs:
    policy = BucketPolicy("b", (ReplicaShape("u", 4, d["prefill"], d["per_token"]),),
                          ttft_slo_s=d["slo"], e2e_slo_s=d["e2e"],
                          target_utilization=d["target"], max_queue=d["max_queue"],
                          max_concurrency=d["max_conc"], degraded_min_tokens=d["degraded"])
    rule = next(r for r in DEFAULT_PRIORITY_RULES if r.priority is d["priority"])
    return Inputs(policy=policy, rule=rule, wait_s=d["wait"],
                  timings=Timings(d["prefill"], d["per_token"]), max_tokens=d["max_tokens"],
                  reserve_tokens=min(d["reserve"], d["max_tokens"]),
                  wait_budget_s=d["budget"], queued=d["queued"], in_flight=d["in_flight"],
                  utilization=d["util"], next_queue_exit_s=lambda k: d["exit"],
                  next_slot_exit_s=lambda k: d["exit"], margin_s=0.005, window_s=10.0,
                  min_retry_after_s=0.05)


decision_inputs = st.fixed_dictionaries({
    "prefill": st.floats(0.001, 2.0), "per_token": st.floats(0.0001, 0.05),
    "slo": st.floats(0.01, 5.0), "e2e": st.none() | st.floats(0.01, 60.0),
    "target": st.floats(0.1, 1.0), "max_queue": st.none() | st.integers(0, 50),
    "max_conc": st.none() | st.integers(1, 50), "degraded": st.none() | st.integers(1, 64),
    "priority": st.sampled_from(list(Priority)), "wait": st.floats(0.0, 10.0),
    "max_tokens": st.integers(1, 4096), "reserve": st.integers(1, 4096),
    "budget": st.sampled_from([0.0, 2.0]), "queued": st.integers(0, 60),
    "in_flight": st.integers(0, 60), "util": st.floats(0.0, 1.5),
    "exit": st.none() | st.floats(0.0, 5.0),
})


@FAST
@given(d=decision_inputs)
def test_admission_decisions_keep_their_invariants(d: dict[str, Any]) -> None:
    x = _inputs(d)
    v = judge(x)
    if isinstance(v, Terms):
        assert 1 <= v.max_tokens <= x.max_tokens
        assert v.reserve_tokens <= v.max_tokens
        bound = x.rule.share * x.policy.ttft_slo_s + x.wait_budget_s
        assert x.wait_s + x.prefill_s + x.margin_s <= bound + 1e-9
        if v.degraded:
            assert x.policy.degraded_min_tokens is not None
            assert v.max_tokens >= x.policy.degraded_min_tokens
        return
    assert v.message.startswith("bucket 'b' is at capacity")
    if v.retry_after_s is not None:
        assert math.isfinite(v.retry_after_s) and v.retry_after_s >= x.min_retry_after_s
    # A higher class is never refused where a lower one is admitted, for the same numbers.
    if x.rule.priority is Priority.INTERACTIVE:
        for lower in (Priority.STANDARD, Priority.BATCH):
            assert isinstance(judge(_inputs({**d, "priority": lower})), Refused)
