"""Per-replica identity in the pool: info metric, declared timings, shape-mismatch refusal."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from lpu_protocol.load_report import LoadReport
from router.config import HealthConfig, parse_config
from router.identity import ReplicaIdentity, shape_mismatch
from router.metrics import make_metrics
from router.pool import BackendPool

A, B = "http://127.0.0.1:9101", "http://127.0.0.1:9102"
CFG = parse_config({"buckets": [{"name": "s", "model": "llama-3.1-8b-instant",
                                 "artifact": "llama-3.1-8b-8k", "backends": [A, B]}]})
BUCKET = CFG.buckets[0]


def _report(**kw: object) -> LoadReport:
    base = LoadReport(8, 0, 0, (0.0,) * 8, 0.19, 0.001786, artifact="llama-3.1-8b-8k",
                      version="2026.11.1", model="llama-3.1-8b-instant",
                      compiler_version="lpuc 0.31.2", digest="sha256:aa", max_seq_len=8192,
                      max_output_tokens=2048)
    return replace(base, **kw)  # type: ignore[arg-type]


def _pool() -> tuple[BackendPool, CollectorRegistry]:
    reg = CollectorRegistry()
    pool = BackendPool(CFG.buckets, HealthConfig(), clock=lambda: 0.0, metrics=make_metrics(reg))
    return pool, reg


def _info(reg: CollectorRegistry) -> list[tuple[str, str, str, float]]:
    fam = next(m for m in reg.collect() if m.name == "lpu_router_backend_artifact_info")
    return sorted((s.labels["backend"], s.labels["version"], s.labels["digest"], s.value)
                  for s in fam.samples)


@pytest.mark.parametrize(("kw", "why"), [
    ({}, None),
    ({"max_seq_len": 2048}, "max_seq_len 2048 != bucket's 8192"),
    ({"max_output_tokens": 1024}, "max_output_tokens 1024 < bucket's 2048"),
    ({"max_output_tokens": 4096}, None),  # the bucket caps output lower: it fits
    ({"model": "other", "artifact": "other-8k"}, "model 'other'"),
    ({"model": None, "artifact": None, "max_seq_len": None, "max_output_tokens": None}, None),
], ids=["fits", "short-seq", "short-output", "larger-output", "other-model",
        "nothing-reported"])
def test_shape_mismatch(kw: dict[str, object], why: str | None) -> None:
    got = shape_mismatch(ReplicaIdentity.of(_report(**kw)), BUCKET)
    assert (got is None) if why is None else (got is not None and why in got)


def test_info_metric_follows_what_replicas_report() -> None:
    pool, reg = _pool()
    assert _info(reg) == []  # nothing reported: no series
    pool.set_identity(A, _report())
    assert _info(reg) == [(A, "2026.11.1", "sha256:aa", 1.0)]
    pool.set_identity(A, _report(version="2026.12.0", digest="sha256:bb"))
    assert _info(reg) == [(A, "2026.12.0", "sha256:bb", 1.0)]  # the old series is gone
    assert pool.replica("s", A).identity == ReplicaIdentity.of(
        _report(version="2026.12.0", digest="sha256:bb"))
    declared = reg.get_sample_value("lpu_router_backend_declared_seconds",
                                    {"bucket": "s", "backend": A, "timing": "per_token"})
    assert declared == pytest.approx(0.001786)


def test_wrong_shape_is_not_up_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    pool, reg = _pool()
    gauge = {"bucket": "s", "backend": B}
    assert reg.get_sample_value("lpu_router_backend_shape_mismatch", gauge) == 0
    with caplog.at_level(logging.WARNING, "lpu_router.pool"):
        for _ in range(3):
            pool.set_identity(B, _report(max_seq_len=2048, artifact="llama-3.1-8b-2k"))
    assert [r for r in caplog.records if "does not fit" in r.getMessage()].__len__() == 1
    assert not pool.is_up("s", B) and pool.is_up("s", A)
    assert pool.replica("s", B).mismatch is not None
    assert reg.get_sample_value("lpu_router_backend_shape_mismatch", gauge) == 1
    assert pool.ready() == {"s": 1}
    pool.set_identity(B, _report())
    assert pool.is_up("s", B) and pool.replica("s", B).mismatch is None
    assert reg.get_sample_value("lpu_router_backend_shape_mismatch", gauge) == 0
