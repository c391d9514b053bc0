"""Experiment 8's table, plot, claims and summary, computed from the mapping it writes to
``exp8_trace_replay.json`` (so ``lpu-bench sweep --index-only`` rebuilds the prose from the
committed numbers). Part of experiment 8, not an experiment of its own.

The mapping: ``config`` (layout, SLOs, the trace and its citation) and ``replays``, one per
speed, each ``{"label", "load", "scale", "start_s", "length_s", "arms": {arm: figures},
"prediction": {...} | None}`` with the figures of
:func:`benchmarks.experiments.replay_figures.arm_figures`.
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

__all__ = ["claims", "overloaded", "plot", "points", "summarize", "table"]

ARMS = ("spill", "no_spill", "off")
SPILL_GAIN = 1.2
OWN_LOSS = 0.05
PLANNER_TOLERANCE = 0.10


def overloaded(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The replay at the highest load above 1x (None: the run has none)."""
    over = [r for r in data.get("replays") or [] if finite(r.get("load")) and r["load"] > 1.0]
    return max(over, key=lambda r: r["load"]) if over else None


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
              rep["arms"][arm]["total"]["spills"]]
             for rep in data.get("replays") or []
             for key in ("prediction", "prediction_no_spill")
             if (p := rep.get(key)) and (arm := p.get("arm")) in rep["arms"]]
    if preds:
        out += ("\nThe planner's simulator (`benchmarks.plan_replay`: the router's admission code"
                " on a virtual clock) on the same arrivals, against the measurement:\n\n"
                + md_table(["speed", "arm", "predicted goodput (req/s)",
                            "measured goodput (req/s)", "measured on the schedule (req/s)",
                            "predicted p99 TTFT (ms)", "measured p99 TTFT (ms)",
                            "predicted refused", "refused", "predicted spills", "spills"],
                           preds))
    return out


def claims(data: Mapping[str, Any]) -> list[Claim]:
    """What the issue requires shown at ~2x overload, each checked on the run's numbers."""
    rep = overloaded(data)
    out: list[Claim] = []
    texts = (f"at the overload, goodput with spill is at least {SPILL_GAIN:g}x goodput without",
             "the timeline rule's admitted requests meet their SLO on the recorded schedules"
             " (with and without spill)",
             f"no bucket's own traffic loses more than {pct(OWN_LOSS)} of its goodput to"
             " spilled work",
             f"the planner's predicted goodput and p99 TTFT are within"
             f" {pct(PLANNER_TOLERANCE)} of the measured replay")
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
    pred = rep.get("prediction")
    if not pred or pred.get("arm") not in arms:
        out.append(missing(texts[3], "planner prediction"))
    else:
        m = arms[pred["arm"]]["total"]
        eg = _ratio(pred["goodput_rps"], m["goodput_rps"]) - 1.0
        ep = _ratio(pred.get("p99_ttft_s"), m["p99_ttft_s"]) - 1.0
        es = _ratio(pred["goodput_rps"], m["schedule_goodput_rps"]) - 1.0
        out.append(Claim(texts[3], abs(eg) <= PLANNER_TOLERANCE and abs(ep) <= PLANNER_TOLERANCE,
                         f"goodput {pred['goodput_rps']:.2f} predicted, {m['goodput_rps']:.2f}"
                         f" measured ({eg:+.1%}; {m['schedule_goodput_rps']:.2f} on the recorded"
                         f" schedules, {es:+.1%}); p99 TTFT {ms(pred.get('p99_ttft_s'))}"
                         f" predicted, {ms(m['p99_ttft_s'])} ms measured ({ep:+.1%}), arm"
                         f" {pred['arm']}"))
    return out


def _arm_line(arm: str, f: Mapping[str, Any]) -> str:
    t = f["total"]
    share = t["refused"] / t["offered"] if t["offered"] else math.nan
    return (f"**{arm}** goodput {t['goodput_rps']:.2f} req/s, {pct(share)} refused,"
            f" {t['violations']} SLO violations among admitted, {t['spills']} spilled,"
            f" p99 TTFT {ms(t['p99_ttft_s'])} ms")


def _why_spill(rep: Mapping[str, Any] | None) -> str:
    """How much spill had to work with at the overload, from the spill arm's figures."""
    fig = rep["arms"].get("spill") if rep is not None else None
    if rep is None or fig is None:
        return ""
    names = list(fig["buckets"])
    items = []
    for i, name in enumerate(names[:-1]):
        f = fig["buckets"][name]
        moved = sum(f["spilled_to"].values())
        larger = [fig["buckets"][n] for n in names[i + 1:]]
        own = ", ".join(f"{n} {pct(b['refused'] / b['offered'] if b['offered'] else None)}"
                        for n, b in zip(names[i + 1:], larger, strict=True))
        items.append(f"{name} spilled {moved} of the {f['refused'] + moved} requests it could"
                     f" not take itself, while the larger buckets refused this share of their"
                     f" own traffic: {own}")
    return listing(f"With spill at {rep['label']}", items)


def summarize(data: Mapping[str, Any]) -> str:
    """The figures of every speed and arm, how much spill moved, then :func:`claims`."""
    parts = []
    for rep in data.get("replays") or []:
        offered = next(iter(rep["arms"].values()))["total"]["offered_rps"] if rep["arms"] else 0
        parts.append(listing(f"At {rep['label']} ({offered:.1f} req/s offered)",
                             [_arm_line(a, rep["arms"][a]) for a in ARMS if a in rep["arms"]]))
    return paragraph([*parts, _why_spill(overloaded(data)), sentences(claims(data))])


def plot(data: Mapping[str, Any]) -> Any:
    """Goodput and refused share per home bucket, the arms side by side, one column per
    speed; the planner's predicted total goodput as a line."""
    reps = list(data.get("replays") or [])
    fig, axes = plt.subplots(2, max(len(reps), 1), figsize=(6.5 * max(len(reps), 1), 7.5),
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
        pred = rep.get("prediction")
        if pred:
            axes[0][col].axhline(pred["goodput_rps"], color="grey", ls="--",
                                 label=f"planner ({pred.get('arm')}), all")
        for row, label in ((0, "goodput (SLO-meeting completions / s)"),
                           (1, "refused (% of offered)")):
            ax = axes[row][col]
            ax.set_xticks(range(len(names)), names)
            ax.set_ylabel(label)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=8)
        axes[1][col].set_ylim(bottom=0.0)
        axes[0][col].set_title(f"{rep['label']}: trace x{rep['load']:.1f},"
                               f" durations x{rep['scale']:g}")
    fig.suptitle("Azure LLM trace 2023 (code, CC-BY) through router + emulators;"
                 " home bucket = smallest fitting shape")
    return fig
