"""The ``lpu-bench scale-out`` results as Markdown; every sentence is computed from the numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchmarks.scale_out_wrk import predict

__all__ = ["markdown", "verdict"]

GOODPUT_MIN = 0.95


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def verdict(cells: list[Mapping[str, Any]]) -> list[str]:
    """The targets (goodput >= 0.95 of capacity, no admitted request late on the schedule),
    per cell that misses one."""
    out = []
    for c in cells:
        name = f"{c['layout']} at {c['rate_x']:.1f}x"
        if c["goodput_fraction"] < GOODPUT_MIN:
            out.append(f"{name}: goodput {c['goodput_fraction']:.3f} of capacity"
                       f" (< {GOODPUT_MIN})")
        if c["ttft_violations_schedule"]:
            out.append(f"{name}: {c['ttft_violations_schedule']} admitted requests late on the"
                       " backends' schedule")
    return out


def _against_one(cells: list[Mapping[str, Any]]) -> list[str]:
    lines = []
    for rate in sorted({c["rate_x"] for c in cells}):
        row = [c for c in cells if c["rate_x"] == rate]
        base = next((c for c in row if c["routers"] == 1 and c["workers"] == 1
                     and c["piggyback"]), None)
        if base is None:
            continue
        for c in row:
            if c is base:
                continue
            lines.append(f"- {rate:.1f}x, {c['layout']}: goodput"
                         f" {c['goodput_fraction'] / base['goodput_fraction']:.3f}x the one"
                         f" process's; backend refusals per admitted"
                         f" {_f(c['backend_refusals_per_admitted'])} (one process:"
                         f" {_f(base['backend_refusals_per_admitted'])})")
    return lines


def _piggyback(cells: list[Mapping[str, Any]]) -> list[str]:
    lines = []
    for c in cells:
        if c["piggyback"]:
            continue
        on = next((o for o in cells if o["piggyback"] and o["rate_x"] == c["rate_x"]
                   and o["routers"] == c["routers"] and o["workers"] == c["workers"]
                   and o.get("poll_s") == c.get("poll_s")), None)
        if on is None:
            continue
        lines.append(f"- {c['rate_x']:.1f}x, {on['layout']}: backend refusals per admitted"
                     f" {_f(on['backend_refusals_per_admitted'])} with the schedule on answers,"
                     f" {_f(c['backend_refusals_per_admitted'])} with /load polls only;"
                     f" retries per admitted {_f(on['retries_per_admitted'])} vs"
                     f" {_f(c['retries_per_admitted'])}; router CPU per request"
                     f" {_f(on['router_cpu_ms_per_request'], '.2f')} vs"
                     f" {_f(c['router_cpu_ms_per_request'], '.2f')} ms")
    return lines


def _median_admitted_rps(cells: list[Mapping[str, Any]]) -> float:
    rates = sorted(c["admitted"] / (c["offered"] / c["rate_rps"]) for c in cells
                   if c.get("redis_cpu_ms_per_admitted") is not None)
    return rates[len(rates) // 2] if rates else 0.0


def markdown(doc: Mapping[str, Any]) -> str:
    s = doc["settings"]
    cells = doc["cells"]
    out = [
        "# lpu-bench scale-out", "",
        f"Command: `{doc['command']}`. Machine: {doc['machine'].get('cpu', '?')},"
        f" {doc['machine'].get('nproc', '?')} cores (the load generator, the emulators and"
        " the routers share them).", "",
        f"Backends: {s['hosts']} emulator processes of `{s['artifact']}` ({s['slots_per_host']}"
        f" slots each, time scale {s['time_scale']}), {s['output_tokens']} output tokens per"
        f" request: capacity {s['capacity_rps']:.1f} completions/s. TTFT SLO"
        f" {s['ttft_slo_s'] * 1e3:.0f} ms, target utilization"
        f" {s.get('target_utilization', 0.85)}. {s['duration_s']:.0f} s of Poisson load per cell."
        f" Separate routers and workers share Redis for limits:"
        f" {'yes' if s['redis'] else 'no (redis-server not found or --no-redis)'}.", "",
        "| layout | load | goodput / capacity | late (schedule / client) | refusal p50 / p99"
        " ms | backend refusals / admitted | retries / admitted | schedules merged / skipped"
        " per admitted | margin ms | router CPU ms / request |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        out.append(
            f"| {c['layout']} | {c['rate_x']:.1f}x ({c['rate_rps']:.0f}/s) |"
            f" {c['goodput_fraction']:.3f} | {c['ttft_violations_schedule']} /"
            f" {c['ttft_violations_client']} of {c['admitted']} |"
            f" {_f(c['refusal_p50_ms'], '.1f')} / {_f(c['refusal_p99_ms'], '.1f')} |"
            f" {c['backend_refusals_per_admitted']:.3f} | {c['retries_per_admitted']:.3f} |"
            f" {c['schedule_merged_per_admitted']:.2f} / {c['schedule_skipped_per_admitted']:.2f}"
            f" | {c.get('margin_ms', 0.0):.0f} | {c['router_cpu_ms_per_request']:.2f} |")
    missed = verdict(cells)
    out += ["", "Targets (goodput >= 0.95 of capacity, 0 late on the schedule): "
            + ("all cells meet them." if not missed else "missed by " + "; ".join(missed) + ".")]
    out += ["", "Against the one-process figure of the same load:", *_against_one(cells)]
    pig = _piggyback(cells)
    if pig:
        out += ["", "The backend's schedule on every answer against /load polling only:", *pig]
    cost = doc.get("piggyback_cost")
    if cost:
        out += ["", "Parse + merge of one answer's schedule (8 slots), microseconds:"]
        for n, c in cost["by_reservations"].items():
            out.append(f"- {n} live reservations: parse {c['parse_us']:.1f}, parse + skip"
                       f" {c['parse_and_skip_us']:.1f}, parse + merge (rebuild)"
                       f" {c['parse_and_merge_us']:.1f} ({c['header_chars']} header chars)")
    uds = doc.get("uds_owner")
    if uds:
        out += ["", "Option (a), one admission owner per host over a Unix socket (decide + finish"
                f" per request; in-process decide + finish alone:"
                f" {uds['in_process_decide_finish_us']:.1f} us):"]
        for name, u in uds["loads"].items():
            out.append(f"- {name} ({u['concurrency']} connection(s), {u['rate_rps']:.0f} req/s):"
                       f" decide round trip p50 {u['decide_rtt_p50_us']:.0f} us, p99"
                       f" {u['decide_rtt_p99_us']:.0f} us; CPU per request: owner"
                       f" {u['owner_cpu_us_per_request']:.1f} us, worker side"
                       f" {u['worker_cpu_us_per_request']:.1f} us")
    wrk = doc.get("workers_wrk")
    if wrk:
        one, two = wrk["runs"]
        out += ["", f"`--workers 2` against `--workers 1` on the canned upstream ({wrk['load']},"
                f" {wrk['connections']} connections, {wrk['duration_s']} s):",
                f"- throughput {one['rps']:.0f} -> {two['rps']:.0f} req/s"
                f" ({_f(wrk['throughput_ratio'], '.2f')}x); CPU per request"
                f" {_f(one['cpu_ms_per_request'], '.3f')} -> {_f(two['cpu_ms_per_request'], '.3f')}"
                f" ms ({_f(wrk['cpu_ratio'], '.2f')}x); cores used"
                f" {_f(one['cpu_cores_used'], '.2f')} -> {_f(two['cpu_cores_used'], '.2f')}"]
        rounds = wrk.get("rounds")
        if rounds:
            out.append(f"- {len(rounds)} rounds, the median one above: throughput ratio "
                       + " / ".join(_f(r["throughput_ratio"], ".2f") for r in rounds)
                       + ", CPU per request ratio "
                       + " / ".join(_f(r["cpu_ratio"], ".2f") for r in rounds))
        redis = doc.get("redis_cpu_ms_per_admitted")
        single = next((c for c in cells if c["routers"] == 1 and c["workers"] == 1), None)
        for label, per in (("router overhead alone (canned upstream, `--workers 2`)",
                            two["cpu_ms_per_request"] or one["cpu_ms_per_request"]),
                           ("a streamed 32-token request under overload (1 process, refusals"
                            " included)", single["router_cpu_ms_per_request"] if single else None)):
            if not per:
                continue
            out.append(f"- predicted from {label}: `cores x 1000 / {per:.3f} ms` (nothing per"
                       " request is shared between workers but the backends and Redis):")
            for cores in (16, 64):
                p = predict(per, cores, redis)
                out.append(f"  - {cores} cores: {p['rps']:.0f} req/s per pod")
        if redis:
            rate = _median_admitted_rps(cells)
            out.append(f"- Redis: {redis:.3f} ms of its CPU per admitted request (median over"
                       f" the cells that use it, each over its whole life, at about {rate:.0f}"
                       " admitted req/s, so it holds what Redis spends whatever the rate, not"
                       " broken down here; the cost per call to size Redis by is"
                       " `benchmarks.limits_store_cost`'s, docs/deploy.md)")
    return "\n".join(out) + "\n"
