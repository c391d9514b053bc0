"""The planner's replay: the router's admission code on a virtual clock, against schedules
computed by hand on tiny traces."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.plan_layout import BucketPlan, Layout
from benchmarks.plan_replay import replay
from benchmarks.plan_report import theory_check
from benchmarks.plan_trace import predict
from benchmarks.shape_family import derive_shape, family
from benchmarks.traces import Trace
from lpu_protocol.tokens import ESTIMATE_UNDERCOUNT_MARGIN
from router.config import RouterConfig, parse_config


def _bucket(name: str, port: int, seq: int, cap: int, prefill_ms: float, slo: float,
            **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": "m", "backends": [f"http://127.0.0.1:{port}"],
            "max_seq_len": seq, "max_output_tokens": cap, "slots": 1, "prefill_ms": prefill_ms,
            "per_token_ms": 10.0, "ttft_slo_s": slo, "target_utilization": 1.0, **extra}


def _config(*buckets: dict[str, Any]) -> RouterConfig:
    # A fixed zero margin: the hand schedule compares exact predicted times with the SLO.
    return parse_config({"admission": {"margin": "fixed", "margin_s": 0.0},
                         "buckets": list(buckets)})


def _trace(rows: list[tuple[float, int, int]]) -> Trace:
    return Trace("hand", np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                 np.array([r[2] for r in rows]))


def test_one_slot_schedule_by_hand() -> None:
    """One slot, prefill 100 ms, 10 ms a token: 11 tokens hold it 0.2 s; SLO 350 ms admits a
    wait of at most 250 ms.

    t=0    r0 starts at 0      (TTFT 0.10)   admitted
    t=0    r1 starts at 0.2    (TTFT 0.30)   admitted
    t=0    r2 would start 0.4  (TTFT 0.50)   refused
    t=0.05 r3 would start 0.4  (TTFT 0.45)   refused
    t=0.25 r4 starts at 0.4    (TTFT 0.25)   admitted
    t=0.5  r5 starts at 0.6    (TTFT 0.20)   admitted (r4 ends at 0.6)
    """
    cfg = _config(_bucket("s", 9100, 1024, 512, 100.0, 0.35))
    trace = _trace([(0.0, 100, 11), (0.0, 100, 11), (0.0, 100, 11), (0.05, 100, 11),
                    (0.25, 100, 11), (0.5, 100, 11)])
    p = replay(cfg, trace, margin=0.0)
    (s,) = p.buckets
    assert (p.offered, p.admitted, p.refused, p.violations) == (6, 4, 2, 0)
    assert dict(s.refused) == {"slo_ttft": 2}
    assert s.ttfts == pytest.approx([0.1, 0.3, 0.25, 0.2])
    assert s.busy_s == pytest.approx(0.8)
    assert p.goodput_rps == pytest.approx(4 / 0.5)
    assert s.utilization == pytest.approx(0.8 / 0.5)  # slot-seconds run past the span
    assert p.padding_waste == pytest.approx(1 - 111 / 1024)
    assert p.worst_start_error_s < 1e-12  # the backend started each where the timeline said


def test_a_dispatch_delay_starts_the_backend_late_and_the_router_learns_it() -> None:
    """As above with 10 ms from decision to backend: r0 starts at 0.01 (TTFT 0.11), r1, admitted
    for a start at 0.2, starts at 0.21 (TTFT 0.31); at r0's first token the router pins its
    start at 0.01, so r2 at t=0.15 is predicted to start at 0.41 (TTFT 0.36 > 0.35): refused."""
    cfg = _config(_bucket("s", 9100, 1024, 512, 100.0, 0.35))
    trace = _trace([(0.0, 100, 11), (0.0, 100, 11), (0.15, 100, 11)])
    p = replay(cfg, trace, margin=0.0, dispatch_s=0.01)
    (s,) = p.buckets
    assert s.ttfts == pytest.approx([0.11, 0.31])
    assert (p.admitted, p.refused, p.violations) == (2, 1, 0)
    assert p.worst_start_error_s == pytest.approx(0.01)


def test_a_sampled_dispatch_delay_of_one_value_is_that_fixed_delay() -> None:
    """The schedule of the test above, from a sample holding only its 10 ms."""
    cfg = _config(_bucket("s", 9100, 1024, 512, 100.0, 0.35))
    trace = _trace([(0.0, 100, 11), (0.0, 100, 11), (0.15, 100, 11)])
    p = replay(cfg, trace, margin=0.0, dispatch_sample=[0.01])
    assert p.buckets[0].ttfts == pytest.approx([0.11, 0.31])
    assert (p.admitted, p.refused) == (2, 1)


def test_each_request_draws_its_own_delay_from_the_sample_reproducibly() -> None:
    """Requests 1 s apart never queue, so each TTFT is the prefill plus the delay it drew:
    every one of them a value of the sample, both values drawn, and the same draws again for
    the same seed."""
    cfg = _config(_bucket("s", 9100, 1024, 512, 100.0, 0.35))
    trace = _trace([(float(i), 100, 11) for i in range(40)])
    sample = [0.0, 0.05]
    runs = [replay(cfg, trace, margin=0.0, dispatch_sample=sample, seed=7) for _ in range(2)]
    delays = [round(t - 0.1, 9) for t in runs[0].buckets[0].ttfts]
    assert set(delays) == {0.0, 0.05}
    assert runs[0].buckets[0].ttfts == runs[1].buckets[0].ttfts


def test_spill_to_the_larger_shape_by_hand() -> None:
    """As above, with a larger bucket (1 slot, prefill 200 ms) that spilled work may fill.

    t=0  r0, r1 admitted to s (TTFT 0.1, 0.3); r2 refused by s (0.5 > 0.35), spilled to b at
         once (TTFT 0.2 meets s's SLO), b's slot until 0.3; r3 refused: b's spill share is full
    t=0.35 r4 admitted to s, starts at 0.4 (TTFT 0.15)
    t=1  r5 (2000-token prompt: b's own) admitted to b at once (TTFT 0.2)
    """
    cfg = _config(_bucket("s", 9100, 1024, 512, 100.0, 0.35),
                  _bucket("b", 9101, 4096, 1024, 200.0, 1.0, spill_share=1.0))
    trace = _trace([(0.0, 100, 11)] * 4 + [(0.35, 100, 11), (1.0, 2000, 11)])
    p = replay(cfg, trace, margin=0.0)
    s, b = p.buckets
    assert (s.offered, s.admitted, s.spilled_out, sum(s.refused.values())) == (5, 4, 1, 1)
    assert (b.offered, b.admitted, b.spilled_in, b.served) == (1, 1, 1, 2)
    assert s.ttfts == pytest.approx([0.1, 0.3, 0.15])
    assert b.ttfts == pytest.approx([0.2, 0.2])
    assert (p.good, p.violations) == (5, 0)


def test_without_spill_the_larger_shape_takes_none() -> None:
    cfg = _config(_bucket("s", 9100, 1024, 512, 100.0, 0.35, spill=False),
                  _bucket("b", 9101, 4096, 1024, 200.0, 1.0, spill_share=1.0))
    trace = _trace([(0.0, 100, 11)] * 4 + [(0.35, 100, 11), (1.0, 2000, 11)])
    s, b = replay(cfg, trace, margin=0.0).buckets
    assert (s.admitted, s.spilled_out, b.spilled_in, sum(s.refused.values())) == (3, 0, 0, 2)


def test_a_request_no_shape_fits_is_unplaceable() -> None:
    cfg = _config(_bucket("s", 9100, 1024, 512, 100.0, 0.35))
    p = replay(cfg, _trace([(0.0, 1020, 11), (1.0, 100, 11)]), margin=0.0)
    assert (p.unplaceable, p.offered, p.admitted) == (1, 1, 1)


def test_the_estimate_margin_moves_a_request_up() -> None:
    """1000 + 3 % = 1030 prompt tokens of shape: with 11 output tokens it no longer fits 1024
    (1011 without the margin would)."""
    cfg = _config(_bucket("s", 9100, 1024, 512, 100.0, 0.35),
                  _bucket("b", 9101, 4096, 1024, 200.0, 1.0))
    s, b = replay(cfg, _trace([(0.0, 1000, 11)]), margin=0.03).buckets
    assert (s.offered, b.offered) == (0, 1)
    s, b = replay(cfg, _trace([(0.0, 1000, 11)]), margin=0.0).buckets
    assert (s.offered, b.offered) == (1, 0)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_replay_meets_the_exact_mdc_where_it_applies(seed: int) -> None:
    """Poisson arrivals, one output length, 8 slots at utilization 0.5, an SLO nothing misses:
    the replay's p99 TTFT is the M/D/c one (within the sampling error of 20,000 requests)."""
    shape = derive_shape(family("llama-3.1-8b-instant"), 2048)
    service = shape.service_time(64)
    n = 20_000
    at = np.cumsum(np.random.default_rng(seed).exponential(service / (0.5 * 8), n))
    trace = Trace("poisson", at, np.full(n, 500, dtype=np.int64), np.full(n, 64, dtype=np.int64))
    layout = Layout("llama-3.1-8b-instant", (BucketPlan(shape, 1, 2.0),))
    p = predict(layout, trace)
    exact = theory_check(layout, trace, ESTIMATE_UNDERCOUNT_MARGIN)["2k"]
    assert p.refused == 0
    assert exact is not None and p.p99_ttft_s == pytest.approx(exact, rel=0.05)
