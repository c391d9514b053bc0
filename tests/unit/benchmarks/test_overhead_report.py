"""lpu-bench overhead's conclusions: ratios to the relay and verdicts, from synthetic figures."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.overhead.report import (
    Figures,
    Targets,
    combine,
    compare,
    comparisons_of,
    conclude,
    figures_dict,
    markdown,
    median_figures,
    verdict,
)

RELAY = Figures(rps=2000.0, cpu_ms_per_request=0.5, p50_ms=0.9, requests=100, errors=0)
DIRECT_P50 = 0.3


def router(rps: float, cpu: float, p50: float) -> Figures:
    return Figures(rps=rps, cpu_ms_per_request=cpu, p50_ms=p50, requests=100, errors=0)


@pytest.mark.parametrize(("fig", "holds"), [
    (router(1300.0, 0.75, 1.2), (True, True, True)),     # every figure exactly at its bound
    (router(1299.0, 0.76, 1.21), (False, False, False)),  # each just past it
    (router(4000.0, 0.2, 0.5), (True, True, True)),      # better than the relay
    (router(1000.0, 0.6, 1.0), (True, False, True)),
], ids=["at-bounds", "past-bounds", "better", "throughput-only"])
def test_compare_checks_each_target(fig: Figures, holds: tuple[bool, bool, bool]) -> None:
    c = compare(fig, RELAY, DIRECT_P50)
    assert c.cpu_ratio == pytest.approx(fig.cpu_ms_per_request / 0.5)  # type: ignore[operator]
    assert c.throughput_ratio == pytest.approx(fig.rps / 2000.0)  # type: ignore[operator]
    assert c.router_added_p50_ms == pytest.approx(fig.p50_ms - DIRECT_P50)
    assert c.relay_added_p50_ms == pytest.approx(0.6)
    assert c.added_p50_extra_ms == pytest.approx(fig.p50_ms - 0.9)
    assert (c.cpu_holds, c.throughput_holds, c.latency_holds) == holds
    assert c.holds == all(holds)


def test_compare_needs_throughput_and_cpu() -> None:
    unmeasured = Figures(rps=None, cpu_ms_per_request=None, p50_ms=1.0, requests=1, errors=0)
    with pytest.raises(ValueError, match="throughput and CPU"):
        compare(unmeasured, RELAY, DIRECT_P50)


def test_targets_are_parameters() -> None:
    c = compare(router(1000.0, 1.0, 1.0), RELAY, DIRECT_P50,
                Targets(cpu_ratio_max=2.0, added_p50_extra_ms_max=0.1, throughput_ratio_min=0.5))
    assert (c.cpu_holds, c.latency_holds, c.throughput_holds) == (True, True, True)


def test_verdict_names_the_worst_cell_and_counts_the_cells() -> None:
    good = compare(router(1500.0, 0.6, 1.0), RELAY, DIRECT_P50)
    bad = compare(router(800.0, 1.5, 2.0), RELAY, DIRECT_P50)
    lines = verdict({"non-streaming, 4 KB prompt": bad, "streaming, 4 KB prompt": good})
    assert lines == [
        "CPU per request: the router spends 3.00x the relay's at most (non-streaming, 4 KB"
        " prompt); the target (at most 1.5x) holds in 1 of 2 cells.",
        "Added p50 at one connection: the router adds +1.10 ms beyond the relay at most"
        " (non-streaming, 4 KB prompt: +1.70 against +0.60 ms); the target (at most +0.3 ms)"
        " holds in 1 of 2 cells.",
        "Throughput: the router serves 0.40x the relay's at least (non-streaming, 4 KB prompt);"
        " the target (at least 0.65x) holds in 1 of 2 cells.",
        "Not every target holds in every cell.",
    ]
    assert verdict({"a": good})[-1] == "All three targets hold in every cell."
    assert "holds in no cell" in verdict({"a": bad})[0]
    assert verdict({}) == []


def test_median_figures_takes_medians_and_sums_counts() -> None:
    rounds = [router(1000.0, 0.4, 1.0), router(3000.0, 0.6, 0.8), router(2000.0, 0.5, 2.0)]
    assert median_figures(rounds) == Figures(rps=2000.0, cpu_ms_per_request=0.5, p50_ms=1.0,
                                             requests=300, errors=0)
    unmeasured = Figures(rps=None, cpu_ms_per_request=None, p50_ms=0.1, requests=5, errors=1)
    assert median_figures([unmeasured, router(1.0, 1.0, 0.3)]) == Figures(
        rps=None, cpu_ms_per_request=None, p50_ms=0.2, requests=105, errors=1)


def test_combine_takes_the_median_of_each_round_ratio_then_checks_it() -> None:
    rounds = [compare(router(r, c, p), RELAY, DIRECT_P50)
              for r, c, p in ((1400.0, 0.5, 0.9), (600.0, 1.0, 2.0), (1500.0, 0.7, 1.1))]
    c = combine(rounds)
    assert c.throughput_ratio == pytest.approx(0.7)  # 0.3 / 0.7 / 0.75
    assert c.cpu_ratio == pytest.approx(1.4)  # 1.0 / 2.0 / 1.4
    assert c.added_p50_extra_ms == pytest.approx(0.2)  # 0.0 / 1.1 / 0.2
    assert c.holds
    assert not combine(rounds, Targets(throughput_ratio_min=0.71)).throughput_holds


def _cell(mode: str, prompt: str, *rounds: dict[str, Figures]) -> dict[str, Any]:
    return {"mode": mode, "prompt": prompt,
            "figures": {n: figures_dict(median_figures([r[n] for r in rounds]))
                        for n in rounds[0]},
            "rounds": [{n: figures_dict(f) for n, f in r.items()} for r in rounds]}


def _doc(cells: list[dict[str, Any]]) -> dict[str, Any]:
    return {"command": "lpu-bench overhead", "machine": {
        "nproc": 2, "cpu": "cpu", "python": "3.11", "platform": "linux", "date": "today"},
        "tools": {"wrk": "4.1"}, "load_generator": "wrk (1 thread)", "nginx": "not installed",
        "settings": {"connections": 32, "duration_s": 5, "max_tokens": 16}, "cells": cells,
        "verdict": conclude(cells)}


def test_only_cells_with_router_relay_and_direct_are_compared() -> None:
    direct = Figures(rps=None, cpu_ms_per_request=None, p50_ms=DIRECT_P50, requests=9, errors=0)
    full = _cell("stream", "4 KB",
                 {"direct": direct, "router": router(1500.0, 0.6, 1.0), "relay": RELAY})
    no_relay = _cell("json", "4 KB", {"direct": direct, "router": router(1500.0, 0.6, 1.0)})
    assert list(comparisons_of([full, no_relay])) == ["streaming, 4 KB prompt"]
    page = markdown(_doc([full, no_relay]))
    assert "nginx: not installed." in page
    assert "| router | 0.600 ms | 1,500 req/s | 1.000 ms | +0.700 ms | 100 | 0 |" in page
    assert "| direct | - | - | 0.300 ms | - | 9 | 0 |" in page
    assert "All three targets hold in every cell." in page
    assert "No verdict" in markdown(_doc([no_relay]))
    assert ("Router against relay: CPU 1.20x, throughput 0.75x, added p50 +0.100 ms beyond the"
            " relay's.") in page


def test_the_page_gives_the_spread_over_rounds() -> None:
    direct = Figures(rps=None, cpu_ms_per_request=None, p50_ms=DIRECT_P50, requests=9, errors=0)
    cell = _cell("json", "4 KB",
                 {"direct": direct, "router": router(1000.0, 1.0, 1.1), "relay": RELAY},
                 {"direct": direct, "router": router(1600.0, 0.6, 1.0), "relay": RELAY})
    page = markdown(_doc([cell]))  # rounds: CPU 2.0 / 1.2, throughput 0.5 / 0.8, p50 +0.2 / +0.1
    assert ("Router against relay (median over 2 rounds, [min to max]): CPU 1.60x [1.20 to"
            " 2.00], throughput 0.65x [0.50 to 0.80], added p50 +0.150 ms [+0.100 to +0.200]"
            " beyond the relay's.") in page
