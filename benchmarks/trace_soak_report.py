"""``benchmarks/results/trace_soak.md``: the trace soak's document (:func:`benchmarks.trace_soak.
soak`) as text. Every sentence is computed from the document's numbers; whether a claim held
is :func:`benchmarks.trace_soak_figures.claims`' verdict, never written here."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from benchmarks.trace_soak_figures import LATENESS_SERIES

__all__ = ["markdown"]


def _ms(s: float | None) -> str:
    return "-" if s is None or (isinstance(s, float) and math.isnan(s)) else f"{s * 1e3:.2f}"


def _intro(doc: Mapping[str, Any]) -> list[str]:
    s, m = doc["settings"], doc["machine"]
    layout = ", ".join(f"{b} = {a} x{r} (TTFT SLO {s['slo_s'][b] * 1e3:.0f} ms)"
                       for b, a, r in s["layout"])
    whole = s["window_s"] >= s["trace_duration_s"]
    span = ("the whole trace" if whole else
            f"trace seconds {s['start_s']:.0f} to {s['start_s'] + s['window_s']:.0f}")
    la0, la1 = doc["loadavg"]["start"], doc["loadavg"]["end"]
    return [
        "# Trace soak: the shipped trace at 1x through 4 emulator processes and a 2-worker"
        " router",
        "",
        f"Command: `{doc['command']}`"
        + (f", code: {doc['source']}" if doc.get("source") else "")
        + f". Trace: {s['citation']}; {s['trace_requests']} requests"
        f" over {s['trace_duration_s'] / 60:.1f} minutes. Replayed: {span}, {s['requests']}"
        f" requests at the trace's own arrival times (load {s['load']:g}x, artifact durations"
        f" x{s['time_scale']:g}), each with the trace's prompt length and its output length as"
        f" a fixed output; {s['unplaced_in_window']} requests of the window fit no bucket and"
        f" were left out. Wall time of the load and its drain: {doc['elapsed_s']:.0f} s.",
        "",
        f"Processes: {s['emulator_processes']} emulator processes, {s['emulator_mode']};"
        f" layout {layout}; the router as `{s['router']}`, admission {s['admission']}; the"
        " open-loop load generator in a process of its own. All on loopback.",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, {m['date']}. The run"
        " did not take the measurement lock (it is light): other work shared the machine,"
        f" load average {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f} at the start and"
        f" {la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f} at the end (1 / 5 / 15 minutes).",
        "",
    ]


def _claims(doc: Mapping[str, Any]) -> list[str]:
    rows = ["## Claims", "", "| claim | held | figures |", "|---|---|---|"]
    rows += [f"| {c['claim']} | {'yes' if c['held'] else '**no**'} | {c['figures']} |"
             for c in doc["claims"]]
    missed = [c["claim"] for c in doc["claims"] if not c["held"]]
    rows += ["", f"{len(doc['claims']) - len(missed)} of {len(doc['claims'])} claims held"
             + (f"; missed: {'; '.join(missed)}." if missed else "."), ""]
    return rows


def _replay(doc: Mapping[str, Any]) -> list[str]:
    fig = doc["replay"]
    rows = ["## Requests by home bucket (client and recorded schedules)", "",
            "| home bucket | offered | refused | admitted | completed | failed | timed out |"
            " SLO violations (schedule) | late at the client | spilled | client TTFT p99 ms |"
            " utilization |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    util = fig.get("utilization", {})
    for name, b in [*fig["buckets"].items(), ("all", fig["total"])]:
        spilled = b.get("spills", sum(b.get("spilled_to", {}).values()))
        u = util.get(name)
        rows.append(f"| {name} | {b['offered']} | {b['refused']} | {b['admitted']} |"
                    f" {b['completed']} | {b['failed']} | {b['timed_out']} | {b['violations']} |"
                    f" {b['late_client']} | {spilled} | {_ms(b['p99_ttft_s'])} |"
                    f" {'-' if u is None else f'{u:.3f}'} |")
    rows += ["", "SLO violations count admitted requests whose first token the emulator's"
             " recorded schedule put later than their home bucket's SLO after their arrival at"
             " the emulator (exact, whatever the machine's load); \"late at the client\" counts"
             " completions whose TTFT measured by the client (send to first token, through the"
             " router and this machine's scheduling) exceeded it.", ""]
    return rows


def _books(doc: Mapping[str, Any]) -> list[str]:
    b = doc["books"]
    srv, cli = b["server"], b["client"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(srv["rejected_by_reason"].items())) or "none"
    return ["## The router's books (pod-wide /metrics, both workers) and the client's", "",
            "| | sent / received | admitted | completed | failed | cancelled | rejected |"
            " in flight |", "|---|---|---|---|---|---|---|---|",
            f"| router | {b['received']} | {srv['admitted']} | {srv['completed']} |"
            f" {srv['failed']} | {srv['cancelled']} | {srv['rejected']} | {srv['in_flight']} |",
            f"| client | {b['sent']} | - | {cli['completed']} | {cli['failed']} |"
            f" {cli['timed_out']} (timed out) | {cli['rejected']} | - |",
            "", f"Rejected by reason: {reasons}. Client HTTP statuses: "
            + ", ".join(f"{k}: {v}" for k, v in b["client_statuses"].items()) + ".", ""]


def _lateness(doc: Mapping[str, Any]) -> list[str]:
    late = doc["lateness"]
    if late["all"] is None:
        return ["## Emulator lateness", "", "No lateness histogram had observations.", ""]
    per_write = late["series"] == LATENESS_SERIES[-1]
    what = (" Per write: the lateness of each write's earliest token (a write after the first"
            " carries every token due since the stream's previous write, which comes at most"
            " once per delivery quantum)." if per_write else " Per token.")
    rows = ["## Emulator lateness (server side, the emulators' own histogram)", "",
            f"Series `{late['series']}`, summed over the emulators.{what} Quantiles are linear"
            " within a bucket; the share within the bound is exact (the bound is a bucket"
            " edge).", "",
            "| token label | observations | p50 ms | p99 ms | p99.9 ms |"
            f" within {late['bound_s'] * 1e3:g} ms | over 1 s |", "|---|---|---|---|---|---|---|"]
    for name, s in [*late["by_token"].items(), ("all", late["all"])]:
        share = s["share_within_bound"]
        rows.append(f"| {name} | {s['count']} | {_ms(s['p50_s'])} | {_ms(s['p99_s'])} |"
                    f" {_ms(s['p999_s'])} | {'-' if share is None else f'{share * 100:.3f}%'} |"
                    f" {s['over_1s']} |")
    rows.append("")
    first, later = late["by_token"].get("first"), late["by_token"].get("later")
    if first and later and first["share_within_bound"] is not None \
            and later["share_within_bound"] is not None:
        share_first = first["share_within_bound"] * 100
        rows += [f"First tokens, each written at its own due time: {share_first:.2f}% within"
                 f" {late['bound_s'] * 1e3:g} ms (p99 {_ms(first['p99_s'])}"
                 f" ms); later tokens, written at most once per delivery quantum per stream (the"
                 f" --tick-ms above): {later['share_within_bound'] * 100:.2f}% (p99"
                 f" {_ms(later['p99_s'])} ms).", ""]
    return rows


def _processes(doc: Mapping[str, Any]) -> list[str]:
    cpu: Mapping[str, float] = doc["cpu_s"]
    rss: Mapping[str, Mapping[str, int]] = doc["rss_kib"]
    logs: Mapping[str, Mapping[str, Any]] = doc["logs"]
    wall = doc["elapsed_s"]
    rows = ["## Processes over the load and its drain", "",
            "| process | CPU s | share of a core | RSS start MiB | RSS end MiB |"
            " stderr lines |", "|---|---|---|---|---|---|"]
    for name, secs in cpu.items():
        share = f"{secs / wall * 100:.1f}%" if wall > 0 else "-"
        r = rss[name]
        rows.append(f"| {name} | {secs:.1f} | {share} | {r['start'] / 1024:.1f} |"
                    f" {r['end'] / 1024:.1f} | {logs.get(name, {}).get('lines', 0)} |")
    errors = doc["schedule_read_errors"]
    rows += ["", "The router's RSS is its supervisor's and its workers' together."
             f" Failed reads of the recorded schedules: {len(errors)}.", ""]
    noisy = {k: v for k, v in logs.items() if v["lines"]}
    for name, log in noisy.items():
        rows += [f"Last lines of {name}'s stderr:", "", "```", *log["tail"], "```", ""]
    return rows


def markdown(doc: Mapping[str, Any]) -> str:
    """The whole report."""
    return "\n".join(_intro(doc) + _claims(doc) + _replay(doc) + _books(doc) + _lateness(doc)
                     + _processes(doc))
