"""The canary's judge beyond the TTFT prediction error (issue 14): SLO attainment, error rate and
observed timings per version, each with its bound; table-driven on the pure ``verdict`` and
through :class:`router.canary.Canary` (the rollback and its reason)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from router.bucket_config import parse_canary
from router.canary import Canary, CanaryConfig, CanaryState, Role, _Stats, verdict
from router.config_fields import Fields

BASE = CanaryConfig("v2", min_requests=4, max_prediction_error_ms=10.0, max_error_rate=0.25,
                    min_slo_attainment=0.75, max_timing_drift=0.05)


def _stats(*, first: int = 0, met: int = 0, ended: int = 0, failed: int = 0,
           errors_ms: float = 0.0, per_token: tuple[float, int] | None = None) -> _Stats:
    s = _Stats()
    s.first_tokens, s.slo_met, s.ended, s.failed = first, met, ended, failed
    s.errors_ms.extend([errors_ms] * first)
    if per_token is not None:
        s.timings["per_token"] = {"http://r": per_token}
    return s


GOOD_STABLE = _stats(first=40, met=40, ended=40, per_token=(0.0100, 40))


@pytest.mark.parametrize(("canary", "config", "why"), [
    (_stats(first=4, met=4, ended=4, per_token=(0.0104, 4)), BASE, None),
    (_stats(first=4, met=2, ended=4), BASE, "SLO attainment 0.5000 < min_slo_attainment 0.75"),
    (_stats(first=4, met=3, ended=4), BASE, None),  # 0.75: at the bound, within it
    (_stats(first=3, met=0, ended=3), BASE, None),  # before min_requests: not judged
    (_stats(first=4, met=2, ended=4), replace(BASE, min_slo_attainment=None), None),
    (_stats(first=4, met=4, ended=4, failed=2), BASE, "error rate 0.5000 > max_error_rate"),
    (_stats(first=4, met=4, ended=4, failed=1), BASE, None),  # 0.25: at the bound
    (_stats(first=4, met=4, ended=4, per_token=(0.0110, 4)), BASE,
     "observed per_token 11.000 ms is 10.0% above the stable replicas' 10.000 ms"),
    (_stats(first=4, met=4, ended=4, per_token=(0.0110, 3)), BASE, None),  # too few samples
    (_stats(first=4, met=4, ended=4, per_token=(0.0110, 4)),
     replace(BASE, max_timing_drift=None), None),
    (_stats(first=4, met=4, ended=4, per_token=(0.0090, 4)), BASE, None),  # faster: fine
    (_stats(first=4, met=4, ended=4, errors_ms=20.0), BASE, "p90 prediction error 20.000 ms"),
], ids=["within", "slo-low", "slo-at-bound", "slo-early", "slo-off", "errors", "errors-at-bound",
        "timing-slow", "timing-few", "timing-off", "timing-faster", "prediction"])
def test_verdict(canary: _Stats, config: CanaryConfig, why: str | None) -> None:
    got = verdict(config, canary, GOOD_STABLE)
    if why is None:
        assert got is None
    else:
        assert got is not None and got.startswith(why), got


def test_a_canary_slower_per_token_than_the_stable_is_rolled_back_by_its_timings() -> None:
    c = Canary("small", "v1", BASE, ttft_slo_s=1.0)
    for i in range(4):  # every canary request on time and predicted exactly
        c.first_token(Role.CANARY, 0.1, 0.0)
        c.ended(Role.CANARY, failed=False)
        c.observed_timing(Role.STABLE, "http://s", "per_token", 0.0100, 10 + i)
    assert c.state is CanaryState.ACTIVE
    c.observed_timing(Role.CANARY, "http://c", "per_token", 0.0108, 3)
    assert c.state is CanaryState.ACTIVE  # 3 samples < min_requests
    c.observed_timing(Role.CANARY, "http://c", "per_token", 0.0108, 4)
    assert c.state is CanaryState.ROLLED_BACK
    assert c.reason is not None and "per_token" in c.reason and "8.0%" in c.reason
    shown = c.as_json()["by_role"]
    assert shown["canary"]["observed_s"] == {"per_token": 0.0108}
    assert shown["stable"]["observed_s"] == {"per_token": 0.0100}


def test_a_roles_timing_is_the_sample_weighted_mean_over_its_replicas() -> None:
    s = _Stats()
    s.timings["prefill"] = {"a": (0.10, 30), "b": (0.13, 10)}
    assert s.timing("prefill") == (pytest.approx(0.1075), 40)
    assert s.timing("per_token") is None


def test_the_new_bounds_parse_and_default_to_not_judged() -> None:
    errors: list[str] = []
    c = parse_canary(Fields({"canary": {"version": "v2", "min_slo_attainment": 0.99,
                                        "max_timing_drift": 0.05}}, "canary", errors))
    assert errors == [] and c is not None
    assert (c.min_slo_attainment, c.max_timing_drift) == (0.99, 0.05)
    d = parse_canary(Fields({"canary": {"version": "v2"}}, "canary", errors))
    assert d is not None and (d.min_slo_attainment, d.max_timing_drift) == (None, None)
    parse_canary(Fields({"canary": {"version": "v2", "min_slo_attainment": 1.5,
                                    "max_timing_drift": -1}}, "canary", errors))
    assert sorted(e.split(":")[0] for e in errors) == [
        "canary.max_timing_drift", "canary.min_slo_attainment"], errors
