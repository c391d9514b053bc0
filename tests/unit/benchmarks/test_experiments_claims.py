"""Every sentence of the sweep's prose is a function of its own numbers: for each experiment,
a result that supports each claim, one that contradicts it (-> "not shown by this run"), and
empty data (-> no empty sentence). The numbers below are small hand-made result files in the
shape each experiment writes to ``<name>.json``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from benchmarks.__main__ import build_parser
from benchmarks.experiments import (
    exp1_queueing,
    exp2_admission,
    exp3_rejection,
    exp4_burstiness,
    exp5_batching,
    exp6_step,
    exp7_hol,
    variable_lengths,
)
from benchmarks.experiments.claims import Claim, listing, paragraph
from benchmarks.experiments.sweep import (
    EXPERIMENTS,
    execute,
    interpretation,
    refresh_prose,
    unmet_claims,
    write_index,
)

NOT_SHOWN = "not shown by this run"


def _exp1_point(slots: int, rho: float, p50: float, p99: float, exact: float,
                mdc: float | None, mmc: float | None) -> dict[str, Any]:
    point = {"slots": slots, "rho": rho, "p50": [p50, p50, p50], "p99": [p99, p99 - 0.01,
             p99 + 0.01], "exact_p99": exact, "mdc_p99": mdc, "mmc_p99": mmc,
             "err_p50": 0.002, "err_p90": 0.004,
             "p99_ci": {"relative_half_width": 0.05, "batches": 20, "batch_size": 500,
                        "lag1": 0.05}, "failed": 0, "send_lag_p99": 0.002, "send_lag_max": 0.01}
    if rho < 1:  # M/D/c's range for the mean wait exists below capacity only
        point |= {"mean_wait": p50 - 0.012, "mdc_mean_wait_band": [p50 - 0.02, p50]}
    return point


EXP1 = {"config": {"service_s": 0.03, "prefill_s": 0.012, "per_token_s": 0.002,
                   "output_tokens": 10, "duration_s": 8.0, "warmup_s": 2.0, "replications": 3},
        "points": [_exp1_point(4, 0.5, 0.014, 0.031, 0.029, 0.033, 0.055),
                   _exp1_point(4, 0.9, 0.034, 0.166, 0.163, 0.172, 0.340),
                   _exp1_point(4, 1.2, 1.1, 1.9, 1.897, None, None),
                   _exp1_point(4, 1.5, 3.0, 4.9, 4.897, None, None),
                   _exp1_point(4, 0.8, 0.021, 0.082, 0.080, 0.086, 0.165)]}


def _exp2_point(policy: str, load: float, goodput: float, p99: float, rejected: float,
                violations: int = 0) -> dict[str, Any]:
    return {"policy": policy, "load": load, "offered_rps": 133.3 * load,
            "goodput_rps": goodput, "p99_admitted": p99, "rejected_share": rejected,
            "violations": violations, "violation_share": violations / 1000.0}


def _lengths(mean_violations: int, worst_goodput: float, learned_goodput: float
             ) -> list[dict[str, Any]]:
    return [_exp2_point("cap_mean", 1.5, 133.5, 0.097, 0.35, mean_violations),
            _exp2_point("cap_worst", 1.5, worst_goodput, 0.016, 0.50),
            _exp2_point("timeline_learned", 1.5, learned_goodput, 0.065, 0.35)]


EXP2 = {"config": {"slots": 4, "service_s": 0.03, "slo_s": 0.1},
        "points": [_exp2_point(p, 0.5, 66.0, 0.03, r) for p, r in
                   (("none", 0.0), ("cap", 0.0), ("token_bucket", 0.006), ("timeline", 0.0))]
        + [_exp2_point("none", 1.5, 0.0, 3.9, 0.0, 1500),
           _exp2_point("cap", 1.5, 133.2, 0.07, 0.31),
           _exp2_point("token_bucket", 1.5, 129.0, 0.04, 0.33),
           _exp2_point("timeline", 1.5, 133.4, 0.097, 0.31)],
        "length_points": _lengths(7, 103.5, 133.6)}


def _exp3_point(load: float, measured: float, same: float) -> dict[str, Any]:
    return {"load": load, "measured": [measured, measured, measured], "same_arrivals": same,
            "stationary": same}


EXP3 = {"points": [_exp3_point(0.8, 0.0, 0.0), _exp3_point(1.2, 0.18, 0.17),
                   _exp3_point(2.0, 0.51, 0.50)]}
EXP4 = {"config": {"rho": 0.7}, "points": [
    {"burstiness": b, "p50": 0.014, "p99": [p99, p99, p99]}
    for b, p99 in ((0.0, 0.016), (1.0, 0.053), (4.0, 0.154))]}
EXP5 = {"points": [{"window_s": w, "p50": [p50, p50, p50], "p99": [p99, p99 - 0.004, p99],
                    "pred_p99": p99 - 0.002}
                   for w, p50, p99 in ((0.0, 0.014, 0.049), (0.02, 0.033, 0.068),
                                       (0.08, 0.035, 0.094))]}


def _phase(mode: str, start: float, load: float, p99: float) -> dict[str, Any]:
    return {"mode": mode, "from_s": start, "load": load, "p99": p99, "rejected_share": 0.1,
            "goodput_rps": 100.0}


EXP6 = {"config": {"slo_s": 0.1}, "phases": [
    _phase("none", 0, 0.6, 0.05), _phase("none", 8, 1.4, 2.7), _phase("none", 16, 0.6, 2.8),
    _phase("timeline", 0, 0.6, 0.05), _phase("timeline", 8, 1.4, 0.096),
    _phase("timeline", 16, 0.6, 0.051)]}
EXP7 = {"points": [
    {"layout": "shared", "load": 0.9, "short_p99": 0.248, "long_p99": 0.233},
    {"layout": "separate", "load": 0.9, "short_p99": 0.041, "long_p99": 0.100}]}


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of ``data`` with the item at ``path`` replaced (the contradicting result)."""
    out = copy.deepcopy(data)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


# (module, supporting data, claim index, contradicting data, words of the claim)
CASES: list[tuple[ModuleType, dict[str, Any], int, dict[str, Any], str]] = [
    (exp1_queueing, EXP1, 0, _set(EXP1, ("points", 1, "p99"), [0.34, 0.33, 0.35]),
     "nearer the M/D/c prediction"),
    (exp1_queueing, EXP1, 1, _set(EXP1, ("points", 0, "exact_p99"), 0.005), "only a few ms"),
    (exp1_queueing, EXP1, 2, _set(EXP1, ("points", 3, "p50"), [0.5, 0.5, 0.5]),
     "the queue grows"),
    # Below capacity (point 1, rho 0.9): the per-request claim is about those points only.
    (exp1_queueing, EXP1, 3, _set(EXP1, ("points", 1, "err_p90"), 0.035),
     "request by request"),
    # A mean wait 11 ms above M/D/c's range: more than the few ms of overhead allowed.
    (exp1_queueing, EXP1, 4, _set(EXP1, ("points", 1, "mean_wait"), 0.034 + 0.011),
     "range M/D/c gives"),
    # Issue 15: the run too short to reach the stationary tail (116 ms against 172 ms).
    (exp1_queueing, EXP1, 5, _set(EXP1, ("points", 1, "p99"), [0.116, 0.106, 0.126]),
     "within 10% of the exact stationary"),
    (exp1_queueing, EXP1, 6, _set(EXP1, ("points", 1, "p99_ci", "relative_half_width"), 0.15),
     "intervals (95%, batch means)"),
    (exp1_queueing, EXP1, 7, _set(EXP1, ("points", 4, "p99_ci", "lag1"), 0.6),
     "treated as independent"),
    # Issue 15's first rho 0.9 run: a starved load generator, 1382 requests failed.
    (exp1_queueing, EXP1, 8, _set(EXP1, ("points", 1, "failed"), 1382),
     "sent on schedule"),
    (exp2_admission, EXP2, 0, _set(EXP2, ("points", 4, "goodput_rps"), 120.0),
     "goodput past capacity collapses"),
    # The loaded machine of issue 10: the timeline rule's p99 at 205.8 ms against 100 ms.
    (exp2_admission, EXP2, 1, _set(EXP2, ("points", 7, "p99_admitted"), 0.2058),
     "within the SLO"),
    (exp2_admission, EXP2, 2, _set(EXP2, ("points", 7, "goodput_rps"), 90.0),
     "near capacity"),
    (exp2_admission, EXP2, 3, _set(EXP2, ("points", 3, "rejected_share"), 0.05),
     "refuses no more than"),
    (exp3_rejection, EXP3, 0, _set(EXP3, ("points", 2, "measured"), [0.1, 0.1, 0.1]),
     "rises with the offered load"),
    (exp3_rejection, EXP3, 1, _set(EXP3, ("points", 0, "measured"), [0.2, 0.2, 0.2]),
     "almost nothing is refused"),
    (exp3_rejection, EXP3, 2, _set(EXP3, ("points", 1, "measured"), [0.4, 0.4, 0.4]),
     "fluid bound"),
    (exp3_rejection, EXP3, 3, _set(EXP3, ("points", 2, "same_arrivals"), 0.3),
     "M/D/c with balking predicts"),
    (exp4_burstiness, EXP4, 0, _set(EXP4, ("points", 1, "p99"), [0.2, 0.2, 0.2]),
     "grows with the burstiness"),
    (exp4_burstiness, EXP4, 1, _set(EXP4, ("points", 2, "p99"), [0.05, 0.05, 0.05]),
     "under-provisions"),
    (exp5_batching, EXP5, 0, _set(EXP5, ("points", 1, "p99"), [0.03, 0.03, 0.03]),
     "no batching window brings"),
    (exp5_batching, EXP5, 1, _set(EXP5, ("points", 2, "p50"), [0.01, 0.01, 0.01]),
     "adds to the median"),
    (exp5_batching, EXP5, 2, _set(EXP5, ("points", 2, "pred_p99"), 0.05), "predicts"),
    (exp6_step, EXP6, 0, _set(EXP6, ("phases", 1, "p99"), 0.09), "pushes the p99"),
    (exp6_step, EXP6, 1, _set(EXP6, ("phases", 4, "p99"), 0.2058), "within the SLO during"),
    (exp6_step, EXP6, 2, _set(EXP6, ("phases", 2, "p99"), 0.05), "backlog still holds"),
    (exp6_step, EXP6, 3, _set(EXP6, ("phases", 5, "p99"), 0.3), "back within the SLO"),
    # Issue 10's other contradiction: separate buckets worse than shared.
    (exp7_hol, EXP7, 0, _set(EXP7, ("points", 1, "short_p99"), 0.3), "lowers the short"),
    (exp7_hol, EXP7, 1, _set(EXP7, ("points", 1, "long_p99"), 0.3), "does not raise the long"),
]
IDS = [f"{m.NAME.split('_')[0]}-{words.replace(' ', '-')}" for m, _, _, _, words in CASES]


@pytest.mark.parametrize(("mod", "good", "index", "bad", "words"), CASES, ids=IDS)
def test_claim_follows_the_numbers(mod: ModuleType, good: dict[str, Any], index: int,
                                   bad: dict[str, Any], words: str) -> None:
    supported: Claim = mod.claims(good)[index]
    contradicted: Claim = mod.claims(bad)[index]
    assert words in supported.text and words in contradicted.text
    assert supported.holds and NOT_SHOWN not in supported.sentence()
    assert not contradicted.holds and NOT_SHOWN in contradicted.sentence()
    assert supported.sentence() in mod.summarize(good)
    assert contradicted.sentence() in mod.summarize(bad)


@pytest.mark.parametrize(("good", "index", "bad", "words"), [
    (_lengths(7, 103.5, 133.6), 0, _lengths(0, 103.5, 133.6), "cap tuned to the mean"),
    (_lengths(7, 103.5, 133.6), 1, _lengths(7, 130.0, 133.6), "gives up goodput"),
    (_lengths(7, 103.5, 133.6), 2, _lengths(7, 103.5, 100.0), "learned lengths"),
], ids=["cap-mean-misses", "cap-worst-loses", "learned-keeps"])
def test_length_claims_follow_the_numbers(good: list[dict[str, Any]], index: int,
                                          bad: list[dict[str, Any]], words: str) -> None:
    assert variable_lengths.claims(good)[index].holds
    contradicted = variable_lengths.claims(bad)[index]
    assert words in contradicted.text and not contradicted.holds
    assert contradicted.sentence() in variable_lengths.summary(bad)


def _no_empty_sentence(text: str) -> None:
    assert ": ." not in text and ":." not in text and ". ." not in text and "()" not in text


@pytest.mark.parametrize("mod", EXPERIMENTS, ids=[m.NAME for m in EXPERIMENTS])
@pytest.mark.parametrize("data", [{}, {"config": {}, "points": [], "phases": []}],
                         ids=["nothing", "empty-lists"])
def test_empty_data_states_no_empty_sentence(mod: ModuleType, data: dict[str, Any]) -> None:
    text = mod.summarize(data)
    _no_empty_sentence(text)
    assert all(not c.holds for c in mod.claims(data))
    assert text.count(NOT_SHOWN) == len(mod.claims(data))


def test_exp1_quick_run_has_no_empty_sentence() -> None:
    """Issue 10: a run without the headline rhos printed "Measured vs exact M/D/c p99 TTFT: ."."""
    quick = {"config": EXP1["config"], "points": [
        _exp1_point(2, 0.6, 0.014, 0.03, 0.028, None, None),
        _exp1_point(2, 1.2, 0.5, 0.9, 0.89, None, None)]}
    text = exp1_queueing.summarize(quick)
    _no_empty_sentence(text)
    assert "Measured vs stationary M/D/c" not in text


@pytest.mark.parametrize(("lead", "items", "expected"), [
    ("Figures", [], ""),
    ("Figures", ["a", "b"], "Figures: a; b."),
], ids=["no-items", "items"])
def test_listing(lead: str, items: list[str], expected: str) -> None:
    assert listing(lead, items) == expected


def test_paragraph_drops_empty_parts() -> None:
    assert paragraph(["One.", "", "  ", "Two."]) == "One. Two."


def test_interpretation_is_the_claims_of_the_present_experiments() -> None:
    docs = {exp2_admission.NAME: _set(EXP2, ("points", 7, "p99_admitted"), 0.2058),
            exp7_hol.NAME: EXP7}
    text = interpretation(docs)
    assert "Admission control" in text and "Batching windows" in text
    assert "Queueing against" not in text and "Burstiness" not in text
    assert ("The timeline rule keeps the p99 TTFT of the requests it admits within the SLO:"
            f" {NOT_SHOWN}") in text
    assert interpretation({}) == ""


def _result_file(out: Path, mod: ModuleType, data: dict[str, Any]) -> None:
    """``<name>.json`` as an experiment writes it, with ``data`` as its numbers."""
    doc = {"name": mod.NAME, "title": mod.TITLE, "elapsed_s": 1.0,
           "machine": {"nproc": 2, "cpu": "x", "python": "3", "platform": "p", "date": "d"},
           "table_md": "| a |\n|---|\n| 1 |\n", "summary": mod.summarize(data),
           "plots": [f"{mod.NAME}.png"], **data}
    (out / f"{mod.NAME}.json").write_text(json.dumps(doc))


def test_unmet_claims_are_those_the_numbers_do_not_support() -> None:
    assert unmet_claims({exp7_hol.NAME: EXP7}) == []
    unmet = unmet_claims({exp7_hol.NAME: _set(EXP7, ("points", 1, "short_p99"), 0.3),
                          exp1_queueing.NAME: EXP1})
    assert [c.text for c in unmet] == [exp7_hol.claims(EXP7)[0].text]


@pytest.mark.parametrize(("data", "only", "status"), [
    (EXP1, "1", 0),
    (_set(EXP1, ("points", 0, "err_p50"), 0.02), "1", 1),
    (EXP1, "1,4", 1),  # experiment 4 has no results in the folder
], ids=["claims-hold", "a-claim-fails", "results-missing"])
def test_check_exits_1_unless_every_claim_holds(tmp_path: Path, data: dict[str, Any], only: str,
                                                status: int) -> None:
    _result_file(tmp_path, exp1_queueing, data)
    args = build_parser().parse_args(["sweep", "--index-only", "--check", "--only", only,
                                      "--out", str(tmp_path)])
    assert execute(args) == status


def test_index_only_recomputes_the_prose(tmp_path: Path) -> None:
    """``--index-only`` rewrites each summary from its JSON numbers, in the JSON, the .md and
    the index; the intro and table stay."""
    doc = {"name": exp7_hol.NAME, "title": exp7_hol.TITLE, "elapsed_s": 1.0,
           "machine": {"nproc": 2, "cpu": "x", "python": "3", "platform": "p", "date": "d"},
           "table_md": "| a |\n|---|\n| 1 |\n", "summary": "Separate buckets always win.",
           "plots": ["exp7_hol.png"], **_set(EXP7, ("points", 1, "short_p99"), 0.3)}
    (tmp_path / "exp7_hol.json").write_text(json.dumps(doc))
    (tmp_path / "exp7_hol.md").write_text(
        f"# {doc['title']}\n\nIntro.\n\n{doc['table_md']}\n{doc['summary']}\n\n![t](x.png)\n")
    assert refresh_prose(tmp_path) == [exp7_hol.NAME]
    new = json.loads((tmp_path / "exp7_hol.json").read_text())["summary"]
    assert "always win" not in new and NOT_SHOWN in new
    md = (tmp_path / "exp7_hol.md").read_text()
    assert "Intro." in md and doc["table_md"] in md and new in md and "always win" not in md
    index = write_index(tmp_path, "lpu-bench sweep --index-only").read_text()
    assert new in index and "always win" not in index
    assert refresh_prose(tmp_path) == []
