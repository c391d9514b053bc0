"""A candidate layout (compiled shapes, replicas, SLOs, spill) and the router config it is.

The planner evaluates a layout by building the router's own configuration from it
(:func:`router_config`, through :func:`router.config.parse_config`, the loader ``lpu-router
--check`` runs) and driving the router's admission code with it, so what is simulated and what
``--out-config`` writes are one object.

Bucket ``i`` of a layout is named by its shape (``"2k"``, ``"8k"``) and its replicas are backend
URL placeholders ``http://127.0.0.1:<port>``, ports counting up from ``base_port`` (default
9100) across the buckets in order: start one backend of that bucket's artifact on each, or
replace the URLs with your replicas'. A shipped shape is written as its ``artifact`` name; a
derived one (:mod:`benchmarks.shape_family`, not compiled yet) as its five schedule fields
(scaled by the layout's ``time_scale``; a shipped one gets the ``time_scale`` key).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from benchmarks.shape_family import DERIVED_VERSION
from lpu_protocol.artifact import Artifact
from router.admission.settings import BucketPolicy
from router.config import RouterConfig, parse_config

__all__ = ["BASE_PORT", "SPILL_SUPPORTED", "BucketPlan", "Layout", "bucket_name",
           "config_mapping", "render_toml", "router_config"]

BASE_PORT = 9100
SPILL_SUPPORTED = "spill" in {f.name for f in fields(BucketPolicy)}
"""The router's buckets know ``spill`` (the key is written only then)."""


def bucket_name(shape: Artifact) -> str:
    n = shape.max_seq_len
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


@dataclass(frozen=True, slots=True)
class BucketPlan:
    """One bucket of a layout: a compiled shape, how many replicas serve it, its TTFT SLO."""

    shape: Artifact
    replicas: int
    ttft_slo_s: float

    @property
    def name(self) -> str:
        return bucket_name(self.shape)


@dataclass(frozen=True, slots=True)
class Layout:
    """Buckets of one model, shortest shape first; ``spill`` for every bucket."""

    model: str
    buckets: tuple[BucketPlan, ...]
    spill: bool = False
    time_scale: float = 1.0
    """The shapes' durations are their artifacts' times this (the backends run that much
    slower: the router's ``time_scale``); the shapes in ``buckets`` are already scaled."""

    @property
    def replicas(self) -> int:
        return sum(b.replicas for b in self.buckets)

    def with_replicas(self, counts: tuple[int, ...]) -> Layout:
        return Layout(self.model, tuple(
            BucketPlan(b.shape, n, b.ttft_slo_s) for b, n in zip(self.buckets, counts,
                                                                   strict=True)),
            self.spill, self.time_scale)

    def with_spill(self, spill: bool) -> Layout:
        return Layout(self.model, self.buckets, spill, self.time_scale)

    def describe(self) -> str:
        parts = [f"{b.name} x{b.replicas}" for b in self.buckets]
        return " + ".join(parts) + (" spill" if self.spill else "")


def _bucket_table(b: BucketPlan, layout: Layout, urls: list[str]) -> dict[str, Any]:
    t: dict[str, Any] = {"name": b.name, "model": layout.model, "backends": urls}
    a = b.shape
    if a.version == DERIVED_VERSION:  # already scaled
        t.update(max_seq_len=a.max_seq_len, max_output_tokens=a.max_output_tokens,
                 slots=a.slots, prefill_ms=round(a.prefill_s * 1e3, 3),
                 per_token_ms=round(a.per_token_s * 1e3, 6))
    else:
        t["artifact"] = a.name
        if layout.time_scale != 1.0:
            t["time_scale"] = layout.time_scale
    t["ttft_slo_s"] = round(b.ttft_slo_s, 6)
    if SPILL_SUPPORTED:
        t["spill"] = layout.spill
    return t


def config_mapping(layout: Layout, base_port: int = BASE_PORT) -> dict[str, Any]:
    """The router config of ``layout`` as a TOML mapping (admission: the router's defaults)."""
    port = base_port
    tables = []
    for b in layout.buckets:
        urls = [f"http://127.0.0.1:{port + i}" for i in range(b.replicas)]
        port += b.replicas
        tables.append(_bucket_table(b, layout, urls))
    return {"admission": {"mode": "timeline"}, "buckets": tables}


def router_config(layout: Layout, base_port: int = BASE_PORT) -> RouterConfig:
    """The layout as the router loads it (ConfigError if the router would refuse it)."""
    return parse_config(config_mapping(layout, base_port), f"<layout {layout.describe()}>")


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def render_toml(mapping: dict[str, Any], header: str = "") -> str:
    """TOML text of a config mapping: plain tables and arrays of tables of scalars and lists."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()]
    for key, value in mapping.items():
        items = value if isinstance(value, list) else [value]
        for table in items:
            lines += ["", f"[[{key}]]" if isinstance(value, list) else f"[{key}]"]
            lines += [f"{k} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines).lstrip("\n") + "\n"
