"""The pure parts of the experiments: the batching-window rule, the client-side token
bucket, the static cap, the predicted rejection rate and the router config the rig writes."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from benchmarks.experiments import SweepConfig
from benchmarks.experiments.batching_proxy import release_times
from benchmarks.experiments.exp2_admission import static_cap, token_bucket_passes
from benchmarks.experiments.exp3_rejection import predicted_rejection
from benchmarks.experiments.rig import Pool, router_config, to_toml
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
