"""The layout search of ``lpu-bench plan --trace`` on synthetic traces whose answer is known,
the derived shapes, and the router config it writes (accepted by ``lpu-router --check``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import main as bench_main
from benchmarks.plan_layout import BucketPlan, Layout, router_config
from benchmarks.plan_search import SearchOptions, search, theory_replicas
from benchmarks.plan_trace import parse_slo
from benchmarks.shape_family import derive_shape, family, shapes
from benchmarks.traces import Trace
from lpu_protocol.artifact import Artifact
from router.__main__ import main as router_main
from router.config import load_config

MODEL = "llama-3.1-8b-instant"
FAM = family(MODEL)


def _poisson(rate: float, n: int, prompts: np.ndarray, outputs: np.ndarray, seed: int) -> Trace:
    at = np.cumsum(np.random.default_rng(seed).exponential(1 / rate, n))
    return Trace("syn", at, prompts.astype(np.int64), outputs.astype(np.int64))


def _two_classes() -> Trace:
    """40 req/s, 30 % with 6000-token prompts, the rest 500; 20 output tokens each."""
    rng = np.random.default_rng(1)
    long = rng.random(2000) < 0.3
    return _poisson(40.0, 2000, np.where(long, 6000, 500), np.full(2000, 20), seed=1)


def _four_x_prefill(a: Artifact) -> float:
    return 4 * a.prefill_s


def test_derived_shapes_are_exact_at_shipped_ones_and_interpolate_between() -> None:
    assert derive_shape(FAM, 8192) is next(a for a in FAM if a.max_seq_len == 8192)
    four = derive_shape(FAM, 4096)
    assert four.prefill_s * 1e3 == pytest.approx(80 + 110 * 2048 / 6144)
    assert (four.slots, four.max_output_tokens, four.version) == (8, 2048, "derived")
    sixteen = derive_shape(FAM, 16384)
    assert (sixteen.slots, sixteen.max_output_tokens, sixteen.name) == (4, 4096,
                                                                        "llama-3.1-8b-16k")
    one = derive_shape(FAM, 1024)  # the first segment extended below the shortest
    assert one.prefill_s * 1e3 == pytest.approx(80 - 110 * 1024 / 6144)
    assert one.max_output_tokens == 512


def test_theory_lower_bound_grows_with_the_rate() -> None:
    two_k = derive_shape(FAM, 2048)
    light = _poisson(1.0, 500, np.full(500, 100), np.full(500, 20), seed=2)
    assert theory_replicas(two_k, light, 0.32) == 1
    # 8 slots / 0.114 s = 70 req/s a replica: 200 req/s needs at least 3.
    heavy = _poisson(200.0, 500, np.full(500, 100), np.full(500, 20), seed=2)
    bound = theory_replicas(two_k, heavy, 0.32)
    assert bound is not None and bound >= 3
    assert theory_replicas(two_k, heavy, 0.05) is None  # the prefill alone misses it


def test_prompts_under_1k_get_one_small_shape() -> None:
    rng = np.random.default_rng(3)
    trace = _poisson(5.0, 600, rng.integers(50, 400, 600), rng.integers(5, 60, 600), seed=3)
    result = search(trace, shapes(FAM, [1024, 2048, 4096, 8192, 16384, 32768]), MODEL,
                    SearchOptions(slo=_four_x_prefill))
    best = result.best
    assert [(b.shape.max_seq_len, b.replicas) for b in best.layout.buckets] == [(1024, 1)]
    assert best.prediction.served_fraction >= 0.99
    assert result.covering.max_seq_len == 1024


@pytest.mark.parametrize(("max_artifacts", "want"), [
    (1, [(8192, 2)]),  # one shape: it must hold the long prompts, and 2 replicas carry it all
    (2, [(2048, 1), (8192, 1)]),  # the same 2 replicas split by shape: less padding
], ids=["one-shape", "two-shapes"])
def test_two_classes_split_at_the_shapes(max_artifacts: int, want: list[tuple[int, int]]
                                         ) -> None:
    result = search(_two_classes(), shapes(FAM, [2048, 8192]), MODEL,
                    SearchOptions(slo=_four_x_prefill, max_artifacts=max_artifacts))
    got = [(b.shape.max_seq_len, b.replicas) for b in result.best.layout.buckets]
    assert got == want
    assert result.best.prediction.served_fraction >= 0.99


def test_the_replica_limit_caps_the_layout() -> None:
    result = search(_two_classes().compressed(4.0), shapes(FAM, [2048, 8192]), MODEL,
                    SearchOptions(slo=_four_x_prefill, max_replicas=2))
    assert result.best.layout.replicas <= 2
    assert result.best.prediction.served_fraction < 0.99  # 4x the rate does not fit in 2


def test_cli_writes_a_config_the_router_accepts_and_json(tmp_path: Path) -> None:
    trace = _two_classes()
    path = tmp_path / "t.csv"
    rows = zip(trace.at_s.tolist(), trace.prompt_tokens.tolist(), trace.output_tokens.tolist(),
               strict=True)
    path.write_text("t,prompt_tokens,output_tokens\n"
                    + "".join(f"{t:.6f},{p},{o}\n" for t, p, o in rows))
    out, js = tmp_path / "plan.toml", tmp_path / "plan.json"
    assert bench_main(["plan", "--trace", str(path), "--shapes", "2048,4096,8192",
                       "--max-artifacts", "2", "--overload", "2", "--out-config", str(out),
                       "--json", str(js)]) == 0
    assert router_main(["--check", str(out)]) == 0
    cfg = load_config(out)
    data = json.loads(js.read_text())
    layout = data["layout"]
    assert [b.name for b in cfg.buckets] == [b["name"] for b in layout["buckets"]]
    assert [len(b.backends) for b in cfg.buckets] == [b["replicas"] for b in layout["buckets"]]
    assert [b.max_seq_len for b in cfg.buckets] == [b["max_seq_len"] for b in layout["buckets"]]
    assert [b.policy.spill for b in cfg.buckets] == [layout["spill"]] * len(cfg.buckets)
    lengths = [b.max_seq_len for b in cfg.buckets]
    assert [b["boundary_tokens"] for b in layout["buckets"]] == [
        [lo, hi] for lo, hi in zip([0, *lengths[:-1]], lengths, strict=True)]
    assert data["prediction"]["offered"] == len(trace)
    assert set(data["overload"]) >= {"factor", "speedup", "spill_on", "spill_off"}
    assert data["overload"]["speedup"] > 1.0


def test_cli_predicts_a_given_layout(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(f'{{"t": {i * 0.1}, "prompt_tokens": {p}, "output_tokens": 5}}\n'
                            for i, p in enumerate([100, 3000, 100, 100])))
    js = tmp_path / "plan.json"
    assert bench_main(["plan", "--trace", str(path), "--layout", "8192:2,2048:1", "--spill",
                       "off", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert [(b["max_seq_len"], b["replicas"]) for b in data["layout"]["buckets"]] == [
        (2048, 1), (8192, 2)]
    assert data["layout"]["spill"] is False
    assert [b["offered"] for b in data["prediction"]["buckets"]] == [3, 1]
    assert len(data["evaluated"]) == 1


def test_cli_names_a_bad_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.csv"
    path.write_text("t,prompt_tokens,output_tokens\n0,10,1\n1,ten,1\n")
    assert bench_main(["plan", "--trace", str(path)]) == 2
    assert "t.csv:3" in capsys.readouterr().err


def test_a_backend_time_scale_reaches_the_router_config() -> None:
    """Shipped shapes get the ``time_scale`` key, derived ones their scaled numbers: the router
    loads the same scaled schedule either way."""
    arts = [a.scaled(10.0) for a in shapes(FAM, [2048, 4096])]
    layout = Layout(MODEL, tuple(BucketPlan(a, 1, 10.0) for a in arts), time_scale=10.0)
    cfg = router_config(layout)
    got = [b.policy.replicas[0].prefill_s for b in cfg.buckets]
    assert got == pytest.approx([a.prefill_s for a in arts])
    assert got[0] == pytest.approx(0.8)


@pytest.mark.parametrize(("spec", "want"), [
    (None, [0.32, 0.76]),  # 4x each prefill (80 ms, 190 ms)
    ("500", [0.5, 0.5]),
    ("2048=300,8192=900", [0.3, 0.9]),
], ids=["prefill-x", "one", "per-shape"])
def test_slo_specs(spec: str | None, want: list[float]) -> None:
    slo = parse_slo(spec, 4.0)
    assert [slo(a) for a in shapes(FAM, [2048, 8192])] == pytest.approx(want)


def test_a_per_shape_slo_must_name_every_shape() -> None:
    with pytest.raises(ValueError, match="no SLO for shape 4096"):
        parse_slo("2048=300", 4.0)(derive_shape(FAM, 4096))
