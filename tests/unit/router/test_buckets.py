"""Bucketing: smallest fitting shape, clamp vs refuse, context-length refusal."""

from __future__ import annotations

from typing import Any

import pytest

from router.bucket_config import BucketConfig, OverCap
from router.buckets import BucketTable
from router.config import parse_config
from router.errors import Rejection
from router.outcomes import RejectReason


def _buckets(over_cap: str = "clamp") -> tuple[BucketConfig, ...]:
    def b(name: str, seq: int, cap: int, model: str = "m") -> dict[str, Any]:
        return {"name": name, "model": model, "backends": [f"http://127.0.0.1:{9000 + seq % 997}"],
                "max_seq_len": seq, "max_output_tokens": cap, "slots": 1, "prefill_ms": 1.0,
                "per_token_ms": 1.0, "over_cap": over_cap}
    # Given out of order on purpose: the table sorts by shape.
    raw = {"buckets": [b("long", 32768, 4096), b("short", 2048, 1024), b("medium", 8192, 2048),
                       b("other", 4096, 512, model="m2")]}
    return parse_config(raw).buckets


CLAMP = BucketTable(_buckets("clamp"), margin=0.0)
REFUSE = BucketTable(_buckets("refuse"), margin=0.0)


@pytest.mark.parametrize(
    ("prompt", "requested", "bucket", "allowance", "clamped_from"),
    [
        (100, 100, "short", 100, None),
        (1000, 1024, "short", 1024, None),
        (1025, 1024, "medium", 1024, None),
        (100, 2000, "medium", 2000, None),
        (100, None, "short", 1024, None),
        (1500, None, "medium", 2048, None),
        (30000, None, "long", 2768, None),
        (100, 5000, "short", 1024, 5000),
        (7000, 3000, "long", 3000, None),
        (30000, 4096, "long", 2768, 4096),
    ],
    ids=["tiny", "exactly-short", "spills-to-medium", "cap-picks-medium", "default-allowance",
         "default-too-big-for-short", "leftover-of-long", "clamped-in-short", "needs-long",
         "clamped-to-room-impossible"],
)
def test_placement_table(prompt: int, requested: int | None, bucket: str, allowance: int,
                         clamped_from: int | None) -> None:
    if bucket == "long" and clamped_from == 4096:
        # 30000 + 4096 > 32768 and the cap is not the problem: context length.
        with pytest.raises(Rejection) as info:
            CLAMP.place("m", prompt, requested)
        assert info.value.reason is RejectReason.CONTEXT_LENGTH
        return
    p = CLAMP.place("m", prompt, requested)
    assert (p.bucket.name, p.max_tokens, p.clamped_from) == (bucket, allowance, clamped_from)


def test_refuse_policy_refuses_over_cap() -> None:
    with pytest.raises(Rejection) as info:
        REFUSE.place("m", 100, 5000, "max_completion_tokens")
    assert info.value.reason is RejectReason.MAX_TOKENS_CAP
    assert info.value.error.status == 400
    assert info.value.error.param == "max_completion_tokens"
    assert "4096" in info.value.error.message
    # Within some bucket's cap it is placed, not refused.
    assert REFUSE.place("m", 100, 3000).bucket.name == "long"


def test_prompt_larger_than_the_largest_bucket() -> None:
    with pytest.raises(Rejection) as info:
        CLAMP.place("m", 40000, 10)
    err = info.value.error
    assert info.value.reason is RejectReason.CONTEXT_LENGTH
    assert (err.status, err.code) == (400, "context_length_exceeded")
    assert "32768" in err.message


def test_unknown_model() -> None:
    with pytest.raises(Rejection) as info:
        CLAMP.place("gpt-4", 10, 10)
    assert info.value.reason is RejectReason.UNKNOWN_MODEL
    assert (info.value.error.status, info.value.error.code) == (404, "model_not_found")


def test_models_are_separate() -> None:
    assert CLAMP.place("m2", 100, 100).bucket.name == "other"
    assert set(CLAMP.models) == {"m", "m2"}


def test_estimate_margin_keeps_room_free() -> None:
    table = BucketTable(_buckets(), margin=0.03)
    assert table.need(1000) == 1030
    # 1000 + 1024 fits 2048 exactly, but not with the 3 % margin.
    assert table.place("m", 1000, 1024).bucket.name == "medium"
    assert table.place("m", 990, 1024).bucket.name == "short"


def test_over_cap_enum_values() -> None:
    assert {o.value for o in OverCap} == {"clamp", "refuse"}


@pytest.mark.parametrize(("bound", "requested"), [
    (100, 100), (1000, 1024), (1025, 1024), (100, 2000), (100, None), (1500, None),
    (100, 5000), (0, None),
], ids=["tiny", "exactly-short", "past-short", "over-short-cap", "default", "default-too-big",
        "over-cap", "empty"])
def test_a_settled_placement_is_what_any_smaller_count_would_get(bound: int,
                                                                 requested: int | None) -> None:
    """``settled`` answers only when the bound fits the smallest shape as asked; then every
    count up to the bound places the request exactly there (so no count is needed)."""
    settled = CLAMP.settled("m", bound, requested)
    placed = CLAMP.place("m", bound, requested)
    if settled is None:  # the count matters: the bound lands past the smallest shape as asked
        assert placed.bucket.name != "short" or placed.clamped_from is not None
        return
    assert settled.bucket.name == "short"
    for count in {0, bound // 2, bound}:
        assert CLAMP.place("m", count, requested) == settled


def test_settled_without_the_model_leaves_it_to_placement() -> None:
    assert CLAMP.settled("nope", 10, None) is None
