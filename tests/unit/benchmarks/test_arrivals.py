"""Arrival schedules, length specs, synthetic prompts and trace files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import arrivals
from benchmarks.lengths import parse_lengths
from benchmarks.prompts import PromptFactory
from benchmarks.workload import WorkloadSpec, load_trace, plan_requests
from lpu_protocol.openai_api import parse_request
from lpu_protocol.tokens import EstimateCounter, prompt_tokens


def _gaps(t: np.ndarray) -> np.ndarray:
    return np.diff(t)


def test_poisson_rate_and_exponential_gaps() -> None:
    t = arrivals.poisson_times(50.0, 2000.0, np.random.default_rng(1))  # ~100 000 arrivals
    assert t.min() >= 0 and t.max() < 2000 and np.all(np.diff(t) >= 0)
    assert t.size == pytest.approx(100_000, abs=5 * np.sqrt(100_000))
    g = _gaps(t)
    assert g.var() / g.mean() ** 2 == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("cv2", [0.25, 1.0, 4.0, 16.0], ids=lambda v: f"cv2={v}")
def test_gamma_burstiness_is_cv2_of_gaps(cv2: float) -> None:
    t = arrivals.gamma_times(20.0, cv2, 5000.0, np.random.default_rng(2))
    g = _gaps(t)
    assert 1 / g.mean() == pytest.approx(20.0, rel=0.04 * max(1.0, np.sqrt(cv2)))
    assert g.var() / g.mean() ** 2 == pytest.approx(cv2, rel=0.12)


def test_constant_is_evenly_spaced() -> None:
    t = arrivals.constant_times(4.0, 2.0)
    np.testing.assert_allclose(t, np.arange(8) / 4.0)


def test_step_segments_have_their_rates() -> None:
    segs = arrivals.parse_steps("100:0.6,100:1.4,100:0.6", capacity=50.0)
    assert segs == [(100.0, 30.0), (100.0, 70.0), (100.0, 30.0)]
    t = arrivals.step_times(segs, np.random.default_rng(3))
    counts = np.histogram(t, bins=[0, 100, 200, 300])[0]
    for got, want in zip(counts, (3000, 7000, 3000), strict=True):
        assert got == pytest.approx(want, abs=5 * np.sqrt(want))


@pytest.mark.parametrize("bad", ["10", "10:x", "-1:2", "5:-1"])
def test_bad_steps_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        arrivals.parse_steps(bad)


def test_lengths() -> None:
    rng = np.random.default_rng(4)
    assert (parse_lengths("fixed:64").sample(10, rng) == 64).all()
    assert parse_lengths("fixed:64").fixed == 64
    u = parse_lengths("uniform:50:60").sample(5000, rng)
    assert u.min() == 50 and u.max() == 60
    ln = parse_lengths("lognormal:200:0.5:400").sample(20_000, rng)
    assert np.median(ln) == pytest.approx(200, rel=0.05) and ln.max() <= 400
    mix = parse_lengths("0.75*fixed:100|0.25*fixed:3000").sample(20_000, rng)
    assert (mix == 3000).mean() == pytest.approx(0.25, abs=0.02)
    assert parse_lengths("3*fixed:1|1*fixed:5").mean() == pytest.approx(2.0)


@pytest.mark.parametrize("bad", ["fixed:0", "uniform:9:3", "normal:5", "fixed:x", "0*fixed:3"])
def test_bad_lengths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_lengths(bad)


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("target", [10, 100, 1500, 30_000], ids=lambda n: f"n={n}")
def test_prompts_count_as_planned(kind: str, target: int) -> None:
    factory = PromptFactory(np.random.default_rng(5))
    body = factory.body(kind, "m", target, 16, index=123)  # type: ignore[arg-type]
    req = parse_request(json.dumps(body).encode(), kind)  # type: ignore[arg-type]
    assert req.stream and req.include_usage and req.max_tokens == 16
    assert prompt_tokens(req, EstimateCounter()) == target


def test_prompts_differ_per_request() -> None:
    factory = PromptFactory(np.random.default_rng(6))
    a = factory.body("chat", "m", 50, 1, 0)["messages"][0]["content"]
    b = factory.body("chat", "m", 50, 1, 1)["messages"][0]["content"]
    assert a != b


def test_plan_is_reproducible() -> None:
    spec = WorkloadSpec(arrivals="gamma", rate=10, duration_s=5, burstiness=4,
                        prompt_tokens=parse_lengths("uniform:10:20"))
    a = plan_requests(spec, np.random.default_rng(9))
    b = plan_requests(spec, np.random.default_rng(9))
    assert a == b and [p.index for p in a] == list(range(len(a)))
    assert all(0 <= p.at_s < 5 and 10 <= p.prompt_tokens <= 20 for p in a)
    capped = plan_requests(WorkloadSpec(rate=100, duration_s=5, max_requests=7),
                           np.random.default_rng(1))
    assert len(capped) == 7


def test_trace_csv_and_jsonl(tmp_path: Path) -> None:
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("t,prompt_tokens,output_tokens,bucket\n0.5,10,3,8k\n0.1,20,4,\n")
    rows = load_trace(csv_path)
    assert [(r.at_s, r.prompt_tokens, r.max_tokens, r.bucket) for r in rows] == [
        (0.1, 20, 4, None), (0.5, 10, 3, "8k")
    ]
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"t": 0, "prompt_tokens": 5, "output_tokens": 2}\n\n'
                  '{"t": 2.5, "prompt_tokens": 6, "output_tokens": 1, "bucket": "2k"}\n')
    spec = WorkloadSpec(arrivals="trace", trace=jl, duration_s=2.0)
    assert [r.prompt_tokens for r in plan_requests(spec, np.random.default_rng(0))] == [5]
    bad = tmp_path / "bad.csv"
    bad.write_text("t,prompt_tokens\n0,5\n")
    with pytest.raises(ValueError, match="output_tokens"):
        load_trace(bad)
