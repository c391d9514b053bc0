"""What ``lpu-bench overhead`` concludes: the router against the reference relay, per cell.

Pure functions of the measured figures (no I/O), so the verdict logic is tested on synthetic
numbers. A *cell* is one workload: a mode (``json`` or ``stream``) and a prompt size. Per cell
and proxy the figures are :class:`Figures`; the router is compared with the relay measured in the
same run (issue 11's targets, :class:`Targets`):

* CPU per request: router / relay <= ``cpu_ratio_max``;
* added p50 at one connection (p50 through the proxy minus p50 straight to the upstream):
  router's <= relay's + ``added_p50_extra_ms_max``;
* throughput at 32 connections: router / relay >= ``throughput_ratio_min``.

Every sentence of the Markdown page is computed from these numbers.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Comparison", "Figures", "Targets", "combine", "compare", "comparisons_of", "conclude",
           "markdown", "median_figures", "round_comparisons", "verdict"]


@dataclass(frozen=True)
class Targets:
    cpu_ratio_max: float = 1.5
    added_p50_extra_ms_max: float = 0.3
    throughput_ratio_min: float = 0.65


@dataclass(frozen=True)
class Figures:
    """One proxy (or ``direct``: the upstream itself) in one cell."""

    rps: float | None
    """2xx responses per second at the high connection count (None: not measured, as the
    upstream's own under ``--quick``)."""
    cpu_ms_per_request: float | None
    """The serving process's user + system CPU per 2xx response at the high connection count
    (None: not measured)."""
    p50_ms: float
    """Median latency at one connection."""
    requests: int
    """2xx responses over both runs."""
    errors: int
    """Other answers and socket errors over both runs."""


@dataclass(frozen=True)
class Comparison:
    """The router against the relay in one cell."""

    cpu_ratio: float
    throughput_ratio: float
    router_added_p50_ms: float
    relay_added_p50_ms: float
    added_p50_extra_ms: float
    """Router's added p50 minus the relay's."""
    cpu_holds: bool
    throughput_holds: bool
    latency_holds: bool

    @property
    def holds(self) -> bool:
        return self.cpu_holds and self.throughput_holds and self.latency_holds


def median_figures(rounds: Sequence[Figures]) -> Figures:
    """One figure per field over rounds of the same target and cell: the median of each rate,
    CPU and latency (None when any round lacks it), the sum of the counts."""
    def med(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known and len(known) == len(values) else None

    p50 = med([f.p50_ms for f in rounds])
    assert p50 is not None
    return Figures(rps=med([f.rps for f in rounds]),
                   cpu_ms_per_request=med([f.cpu_ms_per_request for f in rounds]),
                   p50_ms=p50, requests=sum(f.requests for f in rounds),
                   errors=sum(f.errors for f in rounds))


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def compare(router: Figures, relay: Figures, direct_p50_ms: float,
            targets: Targets = Targets()) -> Comparison:
    """The router's figures against the relay's, both measured against the same upstream whose
    own p50 at one connection is ``direct_p50_ms``. ValueError when either lacks a figure."""
    r_rps, l_rps = router.rps, relay.rps
    r_cpu, l_cpu = router.cpu_ms_per_request, relay.cpu_ms_per_request
    if r_rps is None or l_rps is None or r_cpu is None or l_cpu is None:
        raise ValueError("the router and the relay need throughput and CPU figures")
    cpu = _ratio(r_cpu, l_cpu)
    thr = _ratio(r_rps, l_rps)
    r_added = router.p50_ms - direct_p50_ms
    l_added = relay.p50_ms - direct_p50_ms
    extra = r_added - l_added
    return Comparison(cpu, thr, r_added, l_added, extra,
                      cpu_holds=cpu <= targets.cpu_ratio_max,
                      throughput_holds=thr >= targets.throughput_ratio_min,
                      latency_holds=extra <= targets.added_p50_extra_ms_max)


def verdict(comparisons: Mapping[str, Comparison], targets: Targets = Targets()) -> list[str]:
    """One sentence per target, computed from the per-cell comparisons (cell name -> figures);
    empty when the run compared nothing (the router or the relay did not run)."""
    if not comparisons:
        return []
    n = len(comparisons)

    def tally(attr: str) -> str:
        held = sum(1 for c in comparisons.values() if getattr(c, attr))
        return "holds in every cell" if held == n else \
            f"holds in {held} of {n} cells" if held else "holds in no cell"

    worst_cpu = max(comparisons.items(), key=lambda kv: kv[1].cpu_ratio)
    worst_thr = min(comparisons.items(), key=lambda kv: kv[1].throughput_ratio)
    worst_lat = max(comparisons.items(), key=lambda kv: kv[1].added_p50_extra_ms)
    lines = [
        f"CPU per request: the router spends {_x(worst_cpu[1].cpu_ratio)} the relay's at most"
        f" ({worst_cpu[0]}); the target (at most {targets.cpu_ratio_max:g}x)"
        f" {tally('cpu_holds')}.",
        f"Added p50 at one connection: the router adds {worst_lat[1].added_p50_extra_ms:+.2f}"
        f" ms beyond the relay at most ({worst_lat[0]}: {worst_lat[1].router_added_p50_ms:+.2f}"
        f" against {worst_lat[1].relay_added_p50_ms:+.2f} ms); the target (at most"
        f" +{targets.added_p50_extra_ms_max:g} ms) {tally('latency_holds')}.",
        f"Throughput: the router serves {_x(worst_thr[1].throughput_ratio)} the relay's at"
        f" least ({worst_thr[0]}); the target (at least {targets.throughput_ratio_min:g}x)"
        f" {tally('throughput_holds')}.",
    ]
    every = all(c.holds for c in comparisons.values())
    lines.append("All three targets hold in every cell." if every else
                 "Not every target holds in every cell.")
    return lines


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x"


def cell_name(mode: str, prompt: str) -> str:
    return f"{'streaming' if mode == 'stream' else 'non-streaming'}, {prompt} prompt"


def markdown(doc: Mapping[str, Any]) -> str:
    """The run (the JSON document :mod:`benchmarks.overhead` writes) as a page."""
    m, s = doc["machine"], doc["settings"]
    tools = ", ".join(f"{k} {v}" for k, v in doc["tools"].items())
    lines = [
        "# What the router costs against a 25-line aiohttp relay and nginx",
        "",
        f"Command: `{doc['command']}`. Code: {doc.get('code', 'unknown')}.",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, {m['platform']},"
        f" {m['date']}. Tools: {tools}.",
        "",
        f"Load: {doc['load_generator']}, {s['connections']} connections for throughput and CPU"
        f" per request, 1 connection for latency, {s['duration_s']} s per run, POST"
        f" /v1/chat/completions with max_tokens {s['max_tokens']}, to a canned upstream (a raw"
        " asyncio protocol that answers at once) directly and through each proxy. CPU is the"
        " proxy process's user + system time from /proc over the run, per 2xx response."
        + ("" if doc["nginx"] == "ran" else f" nginx: {doc['nginx']}.")
        + _rounds_note(s.get("rounds", 1)),
        "",
    ]
    for cell in doc["cells"]:
        lines += [f"## {cell_name(cell['mode'], cell['prompt'])}", "",
                  "| proxy | CPU per request | throughput | p50 at 1 connection | added p50 |"
                  " requests | errors |",
                  "|---|---|---|---|---|---|---|"]
        direct = cell["figures"].get("direct")
        for name, f in cell["figures"].items():
            added = "-" if name == "direct" or direct is None else \
                f"{f['p50_ms'] - direct['p50_ms']:+.3f} ms"
            rps = "-" if f["rps"] is None else f"{f['rps']:,.0f} req/s"
            cpu = "-" if f["cpu_ms_per_request"] is None else f"{f['cpu_ms_per_request']:.3f} ms"
            lines.append(f"| {name} | {cpu} | {rps} | {f['p50_ms']:.3f} ms | {added} |"
                         f" {f['requests']} | {f['errors']} |")
        comp = cell.get("router_vs_relay")
        if comp is not None:
            lines += ["", _comparison_line(comp, cell.get("router_vs_relay_rounds") or [])]
        lines.append("")
    if doc["verdict"]:
        lines += ["## Verdict", "", *doc["verdict"], ""]
    else:
        lines += ["## Verdict", "", "No verdict: the router and the relay did not both run.", ""]
    return "\n".join(lines)


def conclude(cells: Sequence[dict[str, Any]], targets: Targets = Targets()) -> list[str]:
    """Add to every cell its router-vs-relay comparison per round (``router_vs_relay_rounds``)
    and combined (``router_vs_relay``, None when not both ran); return the verdict."""
    for cell in cells:
        rounds = round_comparisons(cell, targets)
        cell["router_vs_relay_rounds"] = [comparison_dict(c) for c in rounds]
        cell["router_vs_relay"] = comparison_dict(combine(rounds, targets)) if rounds else None
    return verdict(comparisons_of(cells, targets), targets)


def _rounds_note(rounds: int) -> str:
    if rounds < 2:
        return ""
    return (f" The whole matrix ran {rounds} times: each table gives the median of each figure"
            f" over the {rounds} rounds (requests and errors: totals), each router-against-relay"
            " line the median of the ratios taken within each round, [min to max].")


def _spread(rounds: Sequence[Mapping[str, Any]], key: str, fmt: str) -> str:
    if len(rounds) < 2:
        return ""
    lo, hi = min(r[key] for r in rounds), max(r[key] for r in rounds)
    return f" [{lo:{fmt}} to {hi:{fmt}}]"


def _comparison_line(comp: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]]) -> str:
    over = f" (median over {len(rounds)} rounds, [min to max])" if len(rounds) > 1 else ""
    return (f"Router against relay{over}: CPU {_x(comp['cpu_ratio'])}"
            f"{_spread(rounds, 'cpu_ratio', '.2f')}, throughput"
            f" {_x(comp['throughput_ratio'])}{_spread(rounds, 'throughput_ratio', '.2f')},"
            f" added p50 {comp['added_p50_extra_ms']:+.3f} ms"
            f"{_spread(rounds, 'added_p50_extra_ms', '+.3f')} beyond the relay's.")


def comparison_dict(c: Comparison) -> dict[str, Any]:
    return {**asdict(c), "holds": c.holds}


def figures_dict(f: Figures) -> dict[str, Any]:
    return asdict(f)


def as_figures(raw: Mapping[str, Any]) -> Figures:
    return Figures(**{k: raw[k] for k in Figures.__dataclass_fields__})


def combine(rounds: Sequence[Comparison], targets: Targets = Targets()) -> Comparison:
    """The median of each figure over rounds (each compared within its own round, so a busy
    spell of the machine moves both sides of a ratio), checked against ``targets``."""
    def med(attr: str) -> float:
        return float(statistics.median(getattr(c, attr) for c in rounds))

    cpu, thr, extra = med("cpu_ratio"), med("throughput_ratio"), med("added_p50_extra_ms")
    return Comparison(cpu, thr, med("router_added_p50_ms"), med("relay_added_p50_ms"), extra,
                      cpu_holds=cpu <= targets.cpu_ratio_max,
                      throughput_holds=thr >= targets.throughput_ratio_min,
                      latency_holds=extra <= targets.added_p50_extra_ms_max)


def round_comparisons(cell: Mapping[str, Any], targets: Targets = Targets()) -> list[Comparison]:
    """The router against the relay in each round of ``cell`` (empty when either or the
    upstream did not run)."""
    out = []
    for figs in cell["rounds"]:
        if {"router", "relay", "direct"} <= figs.keys():
            out.append(compare(as_figures(figs["router"]), as_figures(figs["relay"]),
                               figs["direct"]["p50_ms"], targets))
    return out


def comparisons_of(cells: Sequence[Mapping[str, Any]],
                   targets: Targets = Targets()) -> dict[str, Comparison]:
    """Per cell where the router, the relay and the upstream ran: the median comparison over
    its rounds (cell name -> figures)."""
    out: dict[str, Comparison] = {}
    for cell in cells:
        rounds = round_comparisons(cell, targets)
        if rounds:
            out[cell_name(cell["mode"], cell["prompt"])] = combine(rounds, targets)
    return out
