"""The proxy benchmark's summary: ratios against the same round's direct figure, medians."""

from __future__ import annotations

from benchmarks.proxy_overhead import Figures, summarize


def fig(target: str, round_: int, rps: float, p50: float, cpu: float | None) -> Figures:
    return Figures(target, "json", 100, 0, rps, p50, p50 * 2, round_, cpu)


def test_summary_compares_each_round_with_its_own_direct_figure() -> None:
    results = [
        fig("direct", 0, 1000.0, 10.0, 0.2), fig("router", 0, 500.0, 20.0, 0.4),
        fig("direct", 1, 2000.0, 5.0, 0.2), fig("router", 1, 1500.0, 6.0, 0.3),
        fig("direct", 2, 1000.0, 10.0, 0.2), fig("router", 2, 700.0, 12.0, None),
        fig("nginx", 0, 900.0, 11.0, 0.1),
    ]
    router, nginx = summarize(results)
    assert router["proxy"] == "router" and router["rounds"] == 3
    assert router["throughput_ratio"] == {"median": 0.7, "min": 0.5, "max": 0.75}
    assert router["added_p50_ms"] == {"median": 2.0, "min": 1.0, "max": 10.0}
    assert router["cpu_ms_per_request"] == {"median": 0.35, "min": 0.3, "max": 0.4}
    assert nginx["throughput_ratio"] == {"median": 0.9, "min": 0.9, "max": 0.9}
    assert summarize([fig("direct", 0, 1.0, 1.0, None)]) == []
