"""Experiment 8's simulator cases of where spill can gain: the own-load and burst figures by
hand, and the bound's replays on a hand trace where the larger bucket idles."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.experiments import replay_spill_bound as bound
from benchmarks.traces import Trace

_TWO = bound._layout((("llama-3.1-8b-2k", 1), ("llama-3.1-8b-8k", 1)))


def _trace(at: list[float], prompts: list[int], outputs: list[int]) -> Trace:
    return Trace("hand", np.array(at, dtype=np.float64), np.array(prompts), np.array(outputs))


def test_own_load_is_own_slot_seconds_over_own_slots() -> None:
    """Over 10 s, two 2K requests of 1 token (80 ms each) and one 8K request of 11 tokens
    (190 ms + 10 per-token times), each bucket 8 slots."""
    trace = _trace([0.0, 5.0, 10.0], [100, 200, 5000], [1, 1, 11])
    two_k, eight_k = (b.shape for b in _TWO.buckets)
    got = bound.own_load(_TWO, trace, 0.0)
    assert got == pytest.approx({
        "2k": 2 * two_k.prefill_s / 10.0 / 8,
        "8k": (eight_k.prefill_s + 10 * eight_k.per_token_s) / 10.0 / 8})


@pytest.mark.parametrize(("at", "prompts", "want"), [
    ([0.0, 0.5, 31.0, 31.5, 61.0], [100, 5000, 100, 5000, 100], None),
    ([0.0, 0.5, 1.0, 1.5, 31.0, 32.0, 61.0, 61.5, 62.0, 62.5, 63.0, 63.5],
     [100, 100, 5000, 5000, 100, 5000, 100, 100, 100, 5000, 5000, 5000], 1.0),
    ([0.0, 0.5, 31.0, 31.5, 61.0, 61.5], [100, 100, 5000, 5000, 100, 5000], -1.0),
], ids=["a constant count has no correlation", "bursts together", "bursts apart"])
def test_burst_correlation_per_window(at: list[float], prompts: list[int],
                                      want: float | None) -> None:
    """Arrivals counted per 30 s window, 2K homes against 8K homes."""
    got = bound.burst_correlation(_trace(at, prompts, [1] * len(at)), _TWO, 30.0, 0.0)
    assert got == (None if want is None else pytest.approx(want))


def test_one_bucket_has_no_correlation() -> None:
    one = bound._layout((("llama-3.1-8b-8k", 1),))
    assert bound.burst_correlation(_trace([0.0, 1.0], [100, 5000], [1, 1]), one, 30.0,
                                   0.0) is None


def test_spill_gains_where_the_larger_bucket_idles() -> None:
    """Twenty 2K requests of 200 tokens at once and no 8K traffic: the 2K bucket's 8 slots
    take a first wave within its SLO and refuse the rest, which spill may put on the idle 8K
    bucket (its TTFT within the 2K SLO there): spill must gain, every bucket's own goodput
    kept, and lifting the rule's limits can only take more."""
    trace = _trace([0.0] * 20 + [30.0], [100] * 20 + [5000], [200] * 20 + [1])
    case = bound.Case("hand", _TWO, "4x prefill")
    row = bound.evaluate(case, trace, 2.0, 0.0)
    assert row["good_spill"] > row["good_no_spill"] and row["spills"] > 0
    assert row["own_loss"] <= 0.0
    assert row["spills_limits_off"] >= row["spills"]
    assert row["gain"] == pytest.approx(row["good_spill"] / row["good_no_spill"])
