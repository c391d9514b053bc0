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
