"""Histogram bucket bounds that the router and the emulator share, so that a dashboard can put
their latency series side by side (same ``le`` labels)."""

from __future__ import annotations

__all__ = ["LATENCY_BUCKETS"]

# From 100 us (LPU per-token scale) to 2 minutes (long generations).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0, 120.0,
)
