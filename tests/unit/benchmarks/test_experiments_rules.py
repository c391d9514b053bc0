"""The pure parts of the experiments: the batching-window rule, the client-side token
bucket, the static cap, the predicted rejection rate, the exact schedule of a run, the mean
service time of clipped geometric lengths and the router config the rig writes."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from benchmarks import theory
from benchmarks.experiments import SweepConfig
from benchmarks.experiments.batching_proxy import release_times
from benchmarks.experiments.drive import Measured
from benchmarks.experiments.exp3_rejection import predicted_rejection
from benchmarks.experiments.policies import static_cap, token_bucket_passes
from benchmarks.experiments.rig import Pool, router_config, to_toml
from benchmarks.experiments.schedule import exact_ttft, fifo_starts, mean_wait_band
from benchmarks.experiments.variable_lengths import MAX_TOKENS, mean_service_s, worst_service_s
from benchmarks.records import RequestRecord
from router.config import parse_config

ARRIVALS = np.array([0.0, 0.001, 0.002, 0.05, 0.051, 0.2])


@pytest.mark.parametrize(("window", "batch", "expected"), [
    (0.0, 4, [0.0, 0.001, 0.002, 0.05, 0.051, 0.2]),
    (0.01, 4, [0.01, 0.01, 0.01, 0.06, 0.06, 0.21]),
    (0.01, 2, [0.001, 0.001, 0.012, 0.051, 0.051, 0.21]),
    (1.0, 3, [0.002, 0.002, 0.002, 0.2, 0.2, 0.2]),
], ids=["no-window", "window", "full-batch-leaves-early", "only-full-batches"])
def test_release_times(window: float, batch: int, expected: list[float]) -> None:
    assert release_times(ARRIVALS, window, batch).tolist() == pytest.approx(expected)


def test_release_never_precedes_arrival() -> None:
    t = np.sort(np.random.default_rng(1).uniform(0, 5, 500))
    out = release_times(t, 0.03, 4)
    assert np.all(out >= t) and np.all(out - t <= 0.03 + 1e-12)


@pytest.mark.parametrize(("times", "rate", "burst", "expected"), [
    ([0.0, 0.0, 0.0], 1.0, 2.0, [True, True, False]),
    ([0.0, 0.0, 1.0, 1.0], 1.0, 1.0, [True, False, True, False]),
    ([0.0, 0.125, 0.25, 0.375], 8.0, 1.0, [True, True, True, True]),
], ids=["burst", "refill", "at-rate"])
def test_token_bucket(times: list[float], rate: float, burst: float,
                      expected: list[bool]) -> None:
    assert token_bucket_passes(np.array(times), rate, burst).tolist() == expected


def test_static_cap_is_the_in_flight_count_at_the_slo() -> None:
    cfg = SweepConfig()  # D = 30 ms, prefill 12 ms, SLO 100 ms: two full rounds may wait
    assert static_cap(cfg, 4) == 12
    assert static_cap(SweepConfig(ttft_slo_s=0.02), 4) == 4
    assert static_cap(cfg, 4, service_s=0.21) == 4  # the worst case of 100 tokens


def test_service_times_follow_the_artifact() -> None:
    cfg = SweepConfig()  # prefill 12 ms + 9 x 2 ms
    assert cfg.service_s == pytest.approx(0.030)
    assert worst_service_s(cfg) == pytest.approx(0.012 + (MAX_TOKENS - 1) * 0.002)
    # Geometric mean 10 clipped at 100: E[min(G, 100)] = 10 (1 - 0.9^100) tokens.
    tokens = 10 * (1 - 0.9**100)
    assert mean_service_s(cfg) == pytest.approx(0.012 + (tokens - 1) * 0.002, rel=1e-12)


def test_fifo_starts_keep_the_order_given() -> None:
    # Two slots, D = 1: arrivals given out of order get the starts of their sorted places.
    starts = fifo_starts(np.array([0.5, 0.0, 0.1, 0.2]), 2, 1.0)
    assert starts.tolist() == pytest.approx([1.1, 0.0, 0.1, 1.0])


def test_exact_ttft_is_measured_from_the_intended_time() -> None:
    # One slot, D = 30 ms, prefill 12 ms: the second request, sent 5 ms late, waits for the
    # first; the third was never sent and is placed at its intended time.
    records = [RequestRecord(0, 0.0, 100, 10, sent_s=0.0),
               RequestRecord(1, 0.01, 100, 10, sent_s=0.015),
               RequestRecord(2, 0.1, 100, 10)]
    ttft = exact_ttft(Measured.of(records), 1, 0.030, 0.012)
    assert ttft.tolist() == pytest.approx([0.012, 0.030 - 0.01 + 0.012, 0.012])


def test_mean_wait_band_brackets_the_stationary_mean() -> None:
    # Long runs at rho = 0.6, c = 2: the band holds the stationary M/D/c mean wait.
    lam, d = 0.6 * 2 / 0.03, 0.03
    lo, hi = mean_wait_band(lam, 2, d, duration_s=20.0, warmup_s=2.0, runs=3, groups=200,
                            rng=np.random.default_rng(3))
    assert 0 < lo < theory.mdc_mean_wait(lam, 2, d) < hi < 2 * theory.mdc_mean_wait(lam, 2, d)


def test_predicted_rejection_limits() -> None:
    cfg = SweepConfig()
    rng = np.random.default_rng(2)
    light = np.cumsum(rng.exponential(1 / 20.0, 4000))  # rho = 0.15
    assert predicted_rejection(light, cfg, 4) == 0.0
    heavy = np.cumsum(rng.exponential(1 / (2 * cfg.capacity_rps(4)), 20000))  # rho = 2
    assert predicted_rejection(heavy, cfg, 4) == pytest.approx(0.5, abs=0.03)


def test_rig_writes_a_router_config_the_router_accepts() -> None:
    cfg = SweepConfig()
    pools = [Pool("short", cfg.artifact(4), 1, {"ttft_slo_s": 0.1, "max_concurrency": 12}),
             Pool("long", cfg.artifact(2, name="l", prefill_s=0.06, max_seq_len=8192), 2)]
    backends = {"short": ["http://127.0.0.1:1"], "long": ["http://127.0.0.1:2",
                                                          "http://127.0.0.1:3"]}
    admission = {"mode": "timeline", "priorities": {"standard": {"utilization_factor": "never"}}}
    raw = router_config(pools, backends, admission)
    text = to_toml(raw)
    assert tomllib.loads(text) == raw
    config = parse_config(tomllib.loads(text), "<test>")
    short = config.buckets[0]
    assert short.policy.max_concurrency == 12 and short.policy.ttft_slo_s == 0.1
    assert short.policy.replicas[0].service_time(cfg.output_tokens) == pytest.approx(
        cfg.service_s)
    assert [b.name for b in config.buckets] == ["short", "long"]
