"""Experiment 8's report on hand-made figures: which replay each claim is checked on, and the
utilization row of its plot."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.experiments import replay_report
from benchmarks.experiments.output import plt


def _bucket(offered: int, refused: int, goodput: float) -> dict[str, Any]:
    return {"offered": offered, "refused": refused, "goodput_rps": goodput,
            "own_goodput_rps": goodput, "schedule_goodput_rps": goodput, "violations": 0,
            "late_client": 0, "p99_ttft_s": 0.3, "spilled_to": {}, "timed_out": 0,
            "failed": 0, "offered_rps": float(offered)}


def _arm(short_good: float, util: dict[str, float]) -> dict[str, Any]:
    buckets = {"short": _bucket(100, 60, short_good), "medium": _bucket(50, 0, 5.0)}
    total = {**_bucket(150, 60, short_good + 5.0), "spills": 0}
    return {"buckets": buckets, "total": total, "utilization": util}


def _replay(label: str, load: float, spill_good: float, issue: bool) -> dict[str, Any]:
    util = {"short": 0.9, "medium": 0.37}
    pred = {"goodput_rps": 15.0, "p99_ttft_s": 0.3, "refused": 60, "spills": 0,
            "buckets": {"short": {"refused": 60, "utilization": 0.8},
                        "medium": {"refused": 0, "utilization": 0.4}}}
    return {"label": label, "load": load, "scale": 1.0, "issue_scenario": issue,
            "arms": {"spill": _arm(spill_good, util), "no_spill": _arm(10.0, util)},
            "prediction": {**pred, "arm": "spill"},
            "prediction_no_spill": {**pred, "arm": "no_spill"}}


# The issue's scenario at a higher load than the overload, so that a pick by load alone fails.
DATA = {"replays": [_replay("2x", 70.0, 10.0, False), _replay("10x", 100.0, 14.0, True)]}


def test_the_overload_is_never_the_issue_scenario() -> None:
    assert replay_report.overloaded(DATA)["label"] == "2x"  # type: ignore[index]
    assert replay_report.issue_scenario(DATA)["label"] == "10x"  # type: ignore[index]
    assert replay_report.issue_scenario({"replays": DATA["replays"][:1]}) is None


@pytest.mark.parametrize(("index", "holds", "evidence"), [
    (0, False, "15.00 against 15.00 req/s = 1.00x at 2x"),
    (4, True, "19.00 against 15.00 req/s = 1.27x at 10x"),
], ids=["the overload's gain is its own", "the issue scenario's gain is its own"])
def test_each_scenario_states_its_own_spill_gain(index: int, holds: bool, evidence: str) -> None:
    claim = replay_report.claims(DATA)[index]
    assert (claim.holds, claim.evidence) == (holds, evidence)


def test_the_quick_run_has_no_issue_claims() -> None:
    assert len(replay_report.claims({"replays": DATA["replays"][:1]})) == 4
    assert replay_report.issue_claims({"replays": DATA["replays"][:1]}) == []


def test_summary_contrasts_refusals_and_the_next_buckets_utilization() -> None:
    assert ("Without spill at 10x, the short bucket refused 60.0% of its requests (planner: 60"
            " of 100) while the medium bucket ran at 37.0% utilization (planner: 40.0%)."
            ) in replay_report.summarize(DATA)


def test_plot_draws_each_served_buckets_utilization() -> None:
    fig = replay_report.plot(DATA)
    try:
        ax = fig.axes[2 * 2 + 1]  # third row, the issue scenario's column
        heights = sorted(round(p.get_height(), 6) for p in ax.patches)
        assert heights == [37.0, 37.0, 90.0, 90.0]
    finally:
        plt.close(fig)


def _one_x(pred_p99: float) -> dict[str, Any]:
    rep = _replay("1x", 1.0, 10.0, False)
    for key in ("prediction", "prediction_no_spill"):
        rep[key] = {**rep[key], "p99_ttft_s": pred_p99, "delays": 2, "delay_p50_s": 0.01,
                    "delay_p99_s": 0.05}
    return rep


@pytest.mark.parametrize(("pred_p99", "holds"), [(0.28, True), (0.26, False)],
                         ids=["p99 within 10%", "p99 13% short"])
def test_the_planner_is_checked_at_1x_too(pred_p99: float, holds: bool) -> None:
    """The measured p99 TTFT is 300 ms and goodput matches: 280 ms is within 10%, 260 not."""
    data = {"replays": [_one_x(pred_p99), *DATA["replays"]]}
    extra = replay_report.planner_claims(data)
    assert [c.text.split(",")[0] for c in extra] == ["at 1x"] * 2
    assert [c.holds for c in extra] == [holds] * 2
    assert "the simulator given 2 delays measured by probes (p50 10.0, p99 50.0 ms)" in (
        extra[0].evidence)
    assert replay_report.claims(data)[-2:] == extra


def _case(label: str, buckets: int, gain: float, off: float,
          own: dict[str, float]) -> dict[str, Any]:
    return {"label": label, "layout": "x", "buckets": buckets, "slo_rule": "4x prefill",
            "speedup": 70.0, "own_load": own, "utilization_no_spill": {n: 0.5 for n in own},
            "good_no_spill": 100, "good_spill": round(100 * gain), "spills": 3, "gain": gain,
            "own_loss": 0.0, "good_limits_off_base": 100, "good_limits_off": round(100 * off),
            "spills_limits_off": 5, "gain_limits_off": off, "own_loss_limits_off": 0.0}


def test_the_bound_prose_follows_its_numbers() -> None:
    bound = {"overload": 2.0, "window_s": 30.0, "burst_correlation": 0.96, "cases": [
        _case("the planner's, trace at 1x", 1, 1.0, 1.0, {"8k": 2.0}),
        _case("the experiment's", 2, 1.01, 1.05, {"2k": 1.8, "8k": 2.2})]}
    text = replay_report.summarize({"replays": DATA["replays"], "spill_bound": bound})
    assert ("the largest gain of spill over no spill among the 2 cases is 1.010x (the"
            " experiment's layout x, SLO 4x prefill), and 1.050x with the rule's headroom"
            " limits off") in text
    assert "none reaches 1.2x" in text
    assert "The planner's recommendation for trace at 1x is x: one bucket" in text
    assert "offered at least 2.20x its slots by that traffic alone" in text
    assert "correlate at 0.96" in text
    assert "| the experiment's | x | 4x prefill | 70.0 | 2k 1.80, 8k 2.20 |" in (
        replay_report.table({"replays": [], "spill_bound": bound}))
