"""Experiment 8's table, plot, claims and summary, computed from the mapping it writes to
``exp8_trace_replay.json`` (so ``lpu-bench sweep --index-only`` rebuilds the prose from the
committed numbers). Part of experiment 8, not an experiment of its own.

The mapping: ``config`` (layout, SLOs, the trace and its citation) and ``replays``, one per
speed, each ``{"label", "load", "scale", "start_s", "length_s", "arms": {arm: figures},
"prediction": {...} | None}`` with the figures of
:func:`benchmarks.experiments.replay_figures.arm_figures`. A replay with ``issue_scenario``
true is the issue's own scenario (its own ``layout`` and ``slo_s``): it is checked on its own
(:func:`issue_claims`), never taken for the overload.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.experiments.claims import (
    Claim,
    finite,
    listing,
    missing,
    ms,
    paragraph,
    pct,
    sentences,
)
from benchmarks.experiments.output import fmt_ms, fmt_pct, md_table, plt

__all__ = ["bound_table", "claims", "issue_claims", "issue_scenario", "overloaded",
           "planner_claims", "plot", "points", "summarize", "table"]

ARMS = ("spill", "no_spill", "off")
SPILL_GAIN = 1.2
OWN_LOSS = 0.05
PLANNER_TOLERANCE = 0.10


def overloaded(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The replay at the highest load above 1x, of the experiment's own layout (None: the run
    has none)."""
    over = [r for r in data.get("replays") or [] if finite(r.get("load")) and r["load"] > 1.0
            and not r.get("issue_scenario")]
    return max(over, key=lambda r: r["load"]) if over else None


def issue_scenario(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The issue's own scenario (None: the run has none, as the quick one)."""
    return next((r for r in data.get("replays") or [] if r.get("issue_scenario")), None)


def _ratio(a: Any, b: Any) -> float:
    return float(a) / float(b) if finite(a) and finite(b) and b > 0 else math.nan


def _rows(rep: Mapping[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for arm in ARMS:
        fig = rep["arms"].get(arm)
        if fig is None:
            continue
        for name, f in [*fig["buckets"].items(), ("all", fig["total"])]:
            spills = f.get("spilled_to")
            spill_txt = (", ".join(f"{n} to {b}" for b, n in spills.items())
                         if spills else str(f.get("spills", 0)))
            offered = f["offered"]
            rows.append([rep["label"], arm, name, f"{f['offered_rps']:.1f}",
                         f"{f['refused']} ({fmt_pct(f['refused'] / offered if offered else None)})",
                         f"{f['goodput_rps']:.2f}",
                         f"{f['own_goodput_rps']:.2f}" if "own_goodput_rps" in f else "-",
                         f"{f['schedule_goodput_rps']:.2f}",
                         f["violations"], f["late_client"], fmt_ms(f["p99_ttft_s"]), spill_txt,
                         f["timed_out"], f["failed"]])
    return rows


def points(replays: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat point per speed and arm (its all-buckets figures), as the other experiments
    list theirs."""
    return [{"replay": rep["label"], "load": rep["load"], "arm": arm, **fig["total"]}
            for rep in replays for arm, fig in rep["arms"].items()]


def table(data: Mapping[str, Any]) -> str:
    """One row per speed, arm and home bucket (and all buckets), then the planner's figures."""
    rows = [row for rep in data.get("replays") or [] for row in _rows(rep)]
    out = md_table(["speed", "arm", "home bucket", "offered (req/s)", "refused",
                    "goodput (req/s)", "of it on its own bucket (req/s)",
                    "goodput on the schedule (req/s)",
                    "SLO violations among admitted (schedule)", "late at the client",
                    "p99 TTFT admitted (ms)", "spilled", "timed out at the drain", "failed"],
                   rows)
    preds = [[rep["label"], arm, f"{p['goodput_rps']:.2f}",
              f"{rep['arms'][arm]['total']['goodput_rps']:.2f}",
              f"{rep['arms'][arm]['total']['schedule_goodput_rps']:.2f}",
              ms(p.get("p99_ttft_s")), ms(rep["arms"][arm]["total"]["p99_ttft_s"]),
              p["refused"], rep["arms"][arm]["total"]["refused"], p["spills"],
              rep["arms"][arm]["total"]["spills"],
              f"{ms(p.get('delay_p50_s'))} / {ms(p.get('delay_p99_s'))}"]
             for rep in data.get("replays") or []
             for key in ("prediction", "prediction_no_spill")
             if (p := rep.get(key)) and (arm := p.get("arm")) in rep["arms"]]
    util = [[rep["label"], arm, name, pct(u),
             pct(((rep.get(key) or {}).get("buckets") or {}).get(name, {}).get("utilization"))]
            for rep in data.get("replays") or []
            for arm, key in (("spill", "prediction"), ("no_spill", "prediction_no_spill"),
                             ("off", ""))
            if arm in rep["arms"]
            for name, u in (rep["arms"][arm].get("utilization") or {}).items()]
    if util:
        out += ("\nUtilization per served bucket (busy slot-seconds on the recorded schedule over"
                " its slots times the window, whoever's traffic; above 100%: work admitted in the"
                " window ran past its end; the planner's simulator beside it):\n\n"
                + md_table(["speed", "arm", "bucket", "utilization", "predicted"], util))
    if preds:
        out += ("\nThe planner's simulator (`benchmarks.plan_replay`: the router's admission code"
                " on a virtual clock) on the same arrivals, against the measurement; each"
                " request reaches its backend after a delay drawn from the arm's probe delays"
                " (probe requests sent beside the replay: TTFT at the client less TTFT on the"
                " emulator's recorded schedule):\n\n"
                + md_table(["speed", "arm", "predicted goodput (req/s)",
                            "measured goodput (req/s)", "measured on the schedule (req/s)",
                            "predicted p99 TTFT (ms)", "measured p99 TTFT (ms)",
                            "predicted refused", "refused", "predicted spills", "spills",
                            "probe delays p50 / p99 (ms)"],
                           preds))
    return out + bound_table(data)


def claims(data: Mapping[str, Any]) -> list[Claim]:
    """What the issue requires shown at ~2x overload, each checked on the run's numbers, then
    the same checks on the issue's own scenario when the run has it (:func:`issue_claims`)."""
    texts = (f"at the overload, goodput with spill is at least {SPILL_GAIN:g}x goodput without",
             "the timeline rule's admitted requests meet their SLO on the recorded schedules"
             " (with and without spill)",
             f"no bucket's own traffic loses more than {pct(OWN_LOSS)} of its goodput to"
             " spilled work",
             f"the planner's predicted goodput and p99 TTFT are within"
             f" {pct(PLANNER_TOLERANCE)} of the measured replay")
    return [*_checks(overloaded(data), texts), *issue_claims(data), *planner_claims(data)]


def planner_claims(data: Mapping[str, Any]) -> list[Claim]:
    """The planner's check (goodput and p99 TTFT within :data:`PLANNER_TOLERANCE`, both
    arms with a prediction) on every replay :func:`claims` does not check otherwise: the 1x
    run ([] for the quick run, whose one replay is the overload)."""
    over, issue = overloaded(data), issue_scenario(data)
    out: list[Claim] = []
    for rep in data.get("replays") or []:
        if rep is over or rep is issue:
            continue
        for key in ("prediction", "prediction_no_spill"):
            pred = rep.get(key)
            if not pred:
                continue
            text = (f"at {rep['label']}, the planner's predicted goodput and p99 TTFT are within"
                    f" {pct(PLANNER_TOLERANCE)} of the measured replay (arm {pred.get('arm')})")
            out.append(_planner_check(rep, pred, text))
    return out


def _planner_check(rep: Mapping[str, Any], pred: Mapping[str, Any] | None, text: str) -> Claim:
    """``pred`` against its arm's measured goodput and p99 TTFT in ``rep``."""
    arms = rep["arms"]
    if not pred or pred.get("arm") not in arms:
        return missing(text, "planner prediction")
    m = arms[pred["arm"]]["total"]
    eg = _ratio(pred["goodput_rps"], m["goodput_rps"]) - 1.0
    ep = _ratio(pred.get("p99_ttft_s"), m["p99_ttft_s"]) - 1.0
    es = _ratio(pred["goodput_rps"], m["schedule_goodput_rps"]) - 1.0
    d50, d99 = pred.get("delay_p50_s"), pred.get("delay_p99_s")
    return Claim(text, abs(eg) <= PLANNER_TOLERANCE and abs(ep) <= PLANNER_TOLERANCE,
                 f"goodput {pred['goodput_rps']:.2f} predicted, {m['goodput_rps']:.2f}"
                 f" measured ({eg:+.1%}; {m['schedule_goodput_rps']:.2f} on the recorded"
                 f" schedules, {es:+.1%}); p99 TTFT {ms(pred.get('p99_ttft_s'))}"
                 f" predicted, {ms(m['p99_ttft_s'])} ms measured ({ep:+.1%}), arm"
                 f" {pred['arm']}"
                 + (f", the simulator given {pred.get('delays')} delays measured by probes"
                    f" (p50 {ms(d50)}, p99 {ms(d99)} ms)" if finite(d50) else ""))


def issue_claims(data: Mapping[str, Any]) -> list[Claim]:
    """The checks of :func:`claims` on the issue's own scenario ([]: the run has none)."""
    rep = issue_scenario(data)
    if rep is None:
        return []
    head = f"in the issue's own scenario ({rep['label']} through the demo's layout)"
    texts = (f"{head}, goodput with spill is at least {SPILL_GAIN:g}x goodput without",
             f"{head}, the timeline rule's admitted requests meet their SLO on the recorded"
             " schedules (with and without spill)",
             f"{head}, no bucket's own traffic loses more than {pct(OWN_LOSS)} of its goodput"
             " to spilled work",
             f"{head}, the planner's predicted goodput and p99 TTFT are within"
             f" {pct(PLANNER_TOLERANCE)} of the measured replay")
    return _checks(rep, texts)


def _checks(rep: Mapping[str, Any] | None, texts: Sequence[str]) -> list[Claim]:
    """The four checks of one replay with and without spill, ``texts`` their conclusions."""
    out: list[Claim] = []
    arms = rep["arms"] if rep is not None else {}
    spill, nospill = arms.get("spill"), arms.get("no_spill")
    if rep is None or spill is None or nospill is None:
        return [missing(t, "overloaded replay with and without spill") for t in texts]
    a, b = spill["total"]["goodput_rps"], nospill["total"]["goodput_rps"]
    gain = _ratio(a, b)
    out.append(Claim(texts[0], finite(gain) and gain >= SPILL_GAIN,
                     f"{a:.2f} against {b:.2f} req/s = {gain:.2f}x at {rep['label']}"))
    v = {k: int(arms[k]["total"]["violations"]) for k in ("spill", "no_spill")}
    out.append(Claim(texts[1], sum(v.values()) == 0,
                     f"{v['spill']} violations with spill, {v['no_spill']} without"))
    losses = {name: 1.0 - _ratio(f["goodput_rps"], nospill["buckets"][name]["goodput_rps"])
              for name, f in spill["buckets"].items()}
    shown = [f"{n} {-x:+.1%}" for n, x in losses.items() if finite(x)]
    out.append(Claim(texts[2], bool(shown) and all(x <= OWN_LOSS for x in losses.values()
                                                   if finite(x)),
                     "own-traffic goodput change with spill: " + ", ".join(shown)))
    out.append(_planner_check(rep, rep.get("prediction"), texts[3]))
    return out


def _arm_line(arm: str, f: Mapping[str, Any]) -> str:
    t = f["total"]
    share = t["refused"] / t["offered"] if t["offered"] else math.nan
    return (f"**{arm}** goodput {t['goodput_rps']:.2f} req/s, {pct(share)} refused,"
            f" {t['violations']} SLO violations among admitted, {t['spills']} spilled,"
            f" p99 TTFT {ms(t['p99_ttft_s'])} ms")


def _why_spill(rep: Mapping[str, Any] | None) -> str:
    """How much spill had to work with in ``rep``, from the spill arm's figures."""
    fig = rep["arms"].get("spill") if rep is not None else None
    if rep is None or fig is None:
        return ""
    names = list(fig["buckets"])
    items = []
    for i, name in enumerate(names[:-1]):
        f = fig["buckets"][name]
        moved = sum(f["spilled_to"].values())
        larger = [fig["buckets"][n] for n in names[i + 1:]]
        own = ", ".join(f"{n} {pct(b['refused'] / b['offered'])}" if b["offered"]
                        else f"{n} none (it had no traffic of its own)"
                        for n, b in zip(names[i + 1:], larger, strict=True))
        items.append(f"{name} spilled {moved} of the {f['refused'] + moved} requests it could"
                     f" not take itself, while the larger buckets refused this share of their"
                     f" own traffic: {own}")
    return listing(f"With spill at {rep['label']}", items)


def _issue_contrast(rep: Mapping[str, Any] | None) -> str:
    """The issue's "Why" figures measured on its scenario without spill: the smallest
    bucket's refused share against the next bucket's utilization, each with the planner's."""
    fig = rep["arms"].get("no_spill") if rep is not None else None
    if rep is None or fig is None or len(fig["buckets"]) < 2:
        return ""
    small, nxt = list(fig["buckets"])[:2]
    f = fig["buckets"][small]
    pred = (rep.get("prediction_no_spill") or {}).get("buckets") or {}
    util = (fig.get("utilization") or {}).get(nxt)
    return (f"Without spill at {rep['label']}, the {small} bucket refused"
            f" {pct(f['refused'] / f['offered'] if f['offered'] else None)} of its requests"
            f" (planner: {pred.get(small, {}).get('refused', '-')} of {f['offered']}) while the"
            f" {nxt} bucket ran at {pct(util)} utilization (planner:"
            f" {pct(pred.get(nxt, {}).get('utilization'))}).")


def bound_table(data: Mapping[str, Any]) -> str:
    """The simulator's cases of :mod:`benchmarks.experiments.replay_spill_bound` ("": the run
    has none, as the quick one)."""
    bound = data.get("spill_bound")
    if not bound:
        return ""
    rows = [[c["label"], c["layout"], c["slo_rule"], f"{c['speedup']:.1f}",
             ", ".join(f"{n} {v:.2f}" for n, v in c["own_load"].items()),
             ", ".join(f"{n} {pct(v)}" for n, v in c["utilization_no_spill"].items()),
             c["good_no_spill"], c["good_spill"], c["spills"], f"{_num(c['gain'])}",
             pct(c["own_loss"]), c["good_limits_off_base"], c["good_limits_off"],
             c["spills_limits_off"], f"{_num(c['gain_limits_off'])}",
             pct(c["own_loss_limits_off"])]
            for c in bound["cases"]]
    return (f"\nWhere spill can gain: the planner's simulator (the router's admission code on a"
            f" virtual clock) on the whole trace compressed to {bound['overload']:g}x overload of"
            " each layout (offered work over all its slots); goodput in requests within their"
            " home bucket's SLO; \"limits off\": spill with every bucket's `spill_share` and"
            " `target_utilization` at 1, against a no-spill replay with the same targets; own"
            " load: each bucket's own traffic's slot-seconds over its slots; own loss: the"
            " largest share of a bucket's own goodput lost with spill:\n\n"
            + md_table(["layout of", "buckets", "SLO", "speedup", "own load",
                        "utilization (no spill)", "good, no spill", "good, spill", "spills",
                        "gain", "own loss", "good, no spill (limits off)",
                        "good, spill (limits off)", "spills (limits off)", "gain (limits off)",
                        "own loss (limits off)"], rows))


def _num(v: Any) -> str:
    return f"{float(v):.3f}x" if finite(v) else "-"


def _bound_text(data: Mapping[str, Any]) -> str:
    """What the simulator's cases show, from their numbers ("" without them)."""
    bound = data.get("spill_bound")
    if not bound or not bound.get("cases"):
        return ""
    cs = bound["cases"]
    best = max(cs, key=lambda c: c["gain"] if finite(c["gain"]) else 0.0)
    best_off = max(cs, key=lambda c: c["gain_limits_off"] if finite(c["gain_limits_off"]) else 0.0)
    reach = [c for c in cs if finite(c["gain"]) and c["gain"] >= SPILL_GAIN]
    planner = [c for c in cs if c["label"].startswith("the planner's")]
    parts = [f"On the simulator at {bound['overload']:g}x overload, the largest gain of spill"
             f" over no spill among the {len(cs)} cases is {_num(best['gain'])}"
             f" ({best['label']} layout {best['layout']}, SLO {best['slo_rule']}), and"
             f" {_num(best_off['gain_limits_off'])} with the rule's headroom limits off"
             f" ({best_off['label']} layout {best_off['layout']}, SLO {best_off['slo_rule']});"
             + (f" {len(reach)} case(s) reach {SPILL_GAIN:g}x." if reach else
                f" none reaches {SPILL_GAIN:g}x.")]
    for c in planner:
        if c["buckets"] == 1:
            parts.append(f"The planner's recommendation for {c['label'].split(', ', 1)[1]}"
                         f" is {c['layout']}: one bucket, so there is nothing to spill to.")
    over = [(c, n, v) for c in cs if c["buckets"] > 1
            for n, v in list(c["own_load"].items())[1:] if v > 0]
    if over:
        lo = min(over, key=lambda x: x[2])
        parts.append(f"In every case with more than one bucket, each larger bucket with traffic"
                     f" of its own is offered at least {lo[2]:.2f}x its slots by that traffic"
                     f" alone (least: {lo[1]} of {lo[0]['label']} layout {lo[0]['layout']}),"
                     " so it has headroom for spilled work only in the gaps between bursts.")
    corr = bound.get("burst_correlation")
    if finite(corr):
        parts.append(f"The trace's arrivals at home in the 2K and the 8K bucket, counted per"
                     f" {bound['window_s']:g} s, correlate at {corr:.2f}: its bursts load both"
                     " shapes at once.")
    return " ".join(parts)


def summarize(data: Mapping[str, Any]) -> str:
    """The figures of every speed and arm, how much spill moved, then :func:`claims`."""
    parts = []
    for rep in data.get("replays") or []:
        offered = next(iter(rep["arms"].values()))["total"]["offered_rps"] if rep["arms"] else 0
        parts.append(listing(f"At {rep['label']} ({offered:.1f} req/s offered)",
                             [_arm_line(a, rep["arms"][a]) for a in ARMS if a in rep["arms"]]))
    issue = issue_scenario(data)
    return paragraph([*parts, _why_spill(overloaded(data)), _issue_contrast(issue),
                      _why_spill(issue), _bound_text(data), sentences(claims(data))])


def plot(data: Mapping[str, Any]) -> Any:
    """Goodput and refused share per home bucket, and utilization per served bucket, the arms
    side by side, one column per speed; the planner's predicted total goodput as a line, its
    predicted utilization as markers."""
    reps = list(data.get("replays") or [])
    fig, axes = plt.subplots(3, max(len(reps), 1), figsize=(6.5 * max(len(reps), 1), 11),
                             squeeze=False)
    for col, rep in enumerate(reps):
        names = [*next(iter(rep["arms"].values()))["buckets"], "all"]
        width = 0.8 / len(ARMS)
        for i, arm in enumerate(a for a in ARMS if a in rep["arms"]):
            f = rep["arms"][arm]
            rows = [f["buckets"][n] if n != "all" else f["total"] for n in names]
            x = [k + (i - 1) * width for k in range(len(names))]
            axes[0][col].bar(x, [r["goodput_rps"] for r in rows], width, label=arm,
                             color=f"C{i}")
            axes[1][col].bar(x, [100 * r["refused"] / r["offered"] if r["offered"] else 0
                                 for r in rows], width, label=arm, color=f"C{i}")
            util = f.get("utilization") or {}
            axes[2][col].bar(x[:-1], [100 * util.get(n, math.nan) for n in names[:-1]], width,
                             label=arm, color=f"C{i}")
            pred_util = ((rep.get({"spill": "prediction", "no_spill": "prediction_no_spill"}
                                  .get(arm, "")) or {}).get("buckets") or {})
            if pred_util:
                axes[2][col].plot(x[:-1], [100 * pred_util.get(n, {}).get("utilization", math.nan)
                                           for n in names[:-1]], "k_", ms=14,
                                  label=f"planner ({arm})" if i == 0 else None)
        pred = rep.get("prediction")
        if pred:
            axes[0][col].axhline(pred["goodput_rps"], color="grey", ls="--",
                                 label=f"planner ({pred.get('arm')}), all")
        for row, label in ((0, "goodput (SLO-meeting completions / s)"),
                           (1, "refused (% of offered)"),
                           (2, "utilization of the served bucket (% of slots)")):
            ax = axes[row][col]
            ticks = names if row < 2 else names[:-1]
            ax.set_xticks(range(len(ticks)), ticks)
            ax.set_ylabel(label)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=8)
        axes[1][col].set_ylim(bottom=0.0)
        axes[2][col].set_ylim(0.0, 100.0)
        layout = "demo layout, " if rep.get("issue_scenario") else ""
        axes[0][col].set_title(f"{rep['label']}: {layout}trace x{rep['load']:.1f},"
                               f" durations x{rep['scale']:g}")
    fig.suptitle("Azure LLM trace 2023 (code, CC-BY) through router + emulators;"
                 " home bucket = smallest fitting shape")
    return fig
