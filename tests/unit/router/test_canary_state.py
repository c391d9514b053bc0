"""The canary's pure state: the deterministic split, the judge's bounds, clear and promote."""

from __future__ import annotations

import pytest

from router.canary import Canary, CanaryConfig, CanaryState, Role, quantile


def _canary(**kw: float) -> Canary:
    config = CanaryConfig("v2", **kw)  # type: ignore[arg-type]
    return Canary("small", "v1", config, ttft_slo_s=1.0)


def _roles(c: Canary, n: int) -> list[Role]:
    out = []
    for _ in range(n):
        out.append(c.route())
        c.admitted()
    return out


@pytest.mark.parametrize(("share", "n", "canary_at"), [
    (0.1, 30, [9, 19, 29]),
    (0.25, 8, [3, 7]),
    (0.5, 4, [1, 3]),
    (1 / 3, 6, [2, 5]),
], ids=["tenth", "quarter", "half", "third"])
def test_split_is_every_share_th_admitted_request(share: float, n: int,
                                                  canary_at: list[int]) -> None:
    roles = _roles(_canary(share=share), n)
    assert [i for i, r in enumerate(roles) if r is Role.CANARY] == canary_at


def test_route_without_admission_does_not_move_the_split() -> None:
    c = _canary(share=0.5)
    assert [c.route(), c.route()] == [Role.STABLE, Role.STABLE]
    c.admitted()
    assert c.route() is Role.CANARY


@pytest.mark.parametrize(("values", "q", "want"), [
    ([], 0.9, None), ([5.0], 0.9, 5.0), ([float(i) for i in range(1, 11)], 0.9, 9.0),
    ([float(i) for i in range(1, 11)], 1.0, 10.0), ([3.0, 1.0, 2.0], 0.5, 2.0),
], ids=["empty", "one", "p90-of-ten", "max", "median-unsorted"])
def test_quantile_nearest_rank(values: list[float], q: float, want: float | None) -> None:
    got = quantile(values, q)
    assert (got != got) if want is None else got == want


def test_rolled_back_at_min_requests_when_every_error_is_beyond() -> None:
    c = _canary(min_requests=5, max_prediction_error_ms=2.0)
    for i in range(4):
        c.first_token(Role.CANARY, 0.1, 0.003)
        assert c.state is CanaryState.ACTIVE, i
    c.first_token(Role.CANARY, 0.1, 0.003)
    assert c.state is CanaryState.ROLLED_BACK
    assert c.reason is not None and "prediction error 3.000 ms" in c.reason
    assert _roles(c, 20) == [Role.STABLE] * 20


def test_stable_errors_never_roll_the_canary_back() -> None:
    c = _canary(min_requests=2, max_prediction_error_ms=2.0)
    for _ in range(10):
        c.first_token(Role.STABLE, 0.1, 0.5)
        c.ended(Role.STABLE, failed=True)
    assert c.state is CanaryState.ACTIVE


def test_p90_within_bound_keeps_the_canary() -> None:
    c = _canary(min_requests=10, max_prediction_error_ms=2.0)
    for i in range(10):  # one error in ten beyond the bound: p90 is the ninth, within
        c.first_token(Role.CANARY, 0.1, 0.010 if i == 0 else 0.001)
    assert c.state is CanaryState.ACTIVE


def test_error_rate_rolls_back_after_min_ended() -> None:
    c = _canary(min_requests=4, max_error_rate=0.25)
    for failed in (True, False, False):
        c.ended(Role.CANARY, failed)
    assert c.state is CanaryState.ACTIVE
    c.ended(Role.CANARY, True)  # 2 of 4 > 0.25
    assert c.state is CanaryState.ROLLED_BACK
    assert c.reason is not None and "error rate 0.5000" in c.reason


def test_clear_restarts_and_promote_ends_the_split() -> None:
    states: list[tuple[str, CanaryState]] = []
    c = Canary("small", "v1", CanaryConfig("v2", min_requests=1, max_error_rate=0.0),
               ttft_slo_s=1.0, on_state=lambda b, s: states.append((b, s)))
    c.ended(Role.CANARY, True)
    assert c.state is CanaryState.ROLLED_BACK
    c.clear()
    assert c.state is CanaryState.ACTIVE and c.reason is None
    assert c.as_json()["by_role"]["canary"]["ended"] == 0
    assert c.promote() == "v2"
    assert (c.stable_version, c.state, c.splitting) == ("v2", CanaryState.NONE, False)
    assert [s for _, s in states] == [CanaryState.ACTIVE, CanaryState.ROLLED_BACK,
                                      CanaryState.ACTIVE, CanaryState.NONE]
    with pytest.raises(ValueError, match="no canary"):
        c.promote()


def test_slo_attainment_per_role() -> None:
    c = _canary()
    c.first_token(Role.CANARY, 0.5, 0.0)
    c.first_token(Role.CANARY, 1.5, 0.0)
    assert c.as_json()["by_role"]["canary"]["slo_attainment"] == 0.5
    assert c.as_json()["by_role"]["stable"]["slo_attainment"] is None
