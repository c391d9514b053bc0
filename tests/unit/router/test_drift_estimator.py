"""DriftEstimator: which streams give samples, and the median of the recent ones."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from router.drift import MIN_TOKENS, DriftEstimator, Timing
from router.metrics import make_metrics

B = "http://127.0.0.1:9101"


def _est(window: int = 64) -> tuple[DriftEstimator, CollectorRegistry]:
    reg = CollectorRegistry()
    return DriftEstimator(make_metrics(reg), tolerance=0.05, window=window), reg


@pytest.mark.parametrize(("tokens", "idle", "prefill", "per_token"), [
    (101, True, 0.1, 0.002),
    (101, False, None, 0.002),  # queued: its first byte includes a wait
    (MIN_TOKENS - 1, True, 0.1, None),  # too short to time tokens
], ids=["idle-long", "queued", "short"])
def test_which_streams_give_samples(tokens: int, idle: bool, prefill: float | None,
                                    per_token: float | None) -> None:
    est, _ = _est()
    end = 1.1 + (tokens - 1) * 0.002
    est.observe("s", B, sent_at=1.0, first_at=1.1, end_at=end, tokens=tokens, idle=idle)
    got = (est.observed("s", B, Timing.PREFILL), est.observed("s", B, Timing.PER_TOKEN))
    assert got == (pytest.approx(prefill) if prefill else None,
                   pytest.approx(per_token) if per_token else None)


def test_median_of_recent_is_robust_and_exported() -> None:
    est, reg = _est(window=5)
    for prefill in (0.5, 0.1, 0.1, 0.1, 9.0, 0.11, 0.1):  # 0.5 leaves the window; 9.0 an outlier
        est.observe("s", B, sent_at=0.0, first_at=prefill, end_at=prefill, tokens=1, idle=True)
    assert est.observed("s", B, Timing.PREFILL) == 0.1
    labels = {"bucket": "s", "backend": B, "timing": "prefill"}
    assert reg.get_sample_value("lpu_router_backend_observed_seconds", labels) == 0.1
    assert reg.get_sample_value("lpu_router_drift_tolerance") == 0.05


def test_drift_tolerance_is_configured_and_checked() -> None:
    from router.config import ConfigError, parse_config

    bucket = {"name": "s", "model": "m", "artifact": "llama-3.1-8b-2k", "backends": [B]}
    assert parse_config({"buckets": [bucket]}).admission.drift_tolerance == 0.05
    cfg = parse_config({"admission": {"drift_tolerance": 0.1}, "buckets": [bucket]})
    assert cfg.admission.drift_tolerance == 0.1
    with pytest.raises(ConfigError, match="drift_tolerance"):
        parse_config({"admission": {"drift_tolerance": -1}, "buckets": [bucket]})
