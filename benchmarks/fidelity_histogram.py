"""The emulator's per-token lateness histogram as the fidelity benchmark reads it.

:func:`parse` takes ``lpu_emulator_token_lateness_seconds`` out of a ``/metrics`` text, by
``token`` label (first / later), summed over models, with the sum of the observations;
:class:`Buckets` adds (over replicas),
subtracts (end of a window minus its start) and reads quantiles. A quantile is reported as
the upper bound of the bucket holding it (the histogram knows no more: "p99 <= 5 ms"), the
maximum as the bound of the highest non-empty bucket (``inf`` above the last bound).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["Buckets", "parse", "writes"]

_NAME = "lpu_emulator_token_lateness_seconds"
_LINE = re.compile(_NAME + r'_bucket\{([^}]*)\} (\S+)')
_SUM = re.compile(_NAME + r'_sum\{([^}]*)\} (\S+)')
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_WRITES = re.compile(r'^lpu:token_delivery_lateness_seconds_count\{[^}]*\} (\S+)$', re.M)


@dataclass
class Buckets:
    """Cumulative counts at each upper bound (seconds, ascending, the last ``inf``), and the
    sum of the observations (seconds)."""

    cumulative: dict[float, float] = field(default_factory=dict)
    total: float = 0.0

    def __add__(self, other: Buckets) -> Buckets:
        keys = set(self.cumulative) | set(other.cumulative)
        return Buckets({k: self.cumulative.get(k, 0.0) + other.cumulative.get(k, 0.0)
                        for k in sorted(keys)}, self.total + other.total)

    def __sub__(self, other: Buckets) -> Buckets:
        return Buckets({k: v - other.cumulative.get(k, 0.0)
                        for k, v in sorted(self.cumulative.items())}, self.total - other.total)

    @property
    def count(self) -> float:
        return self.cumulative.get(math.inf, 0.0)

    def quantile_bound(self, q: float) -> float:
        """The smallest bound with at least ``q`` of the count at or under it (nan if empty)."""
        total = self.count
        if total <= 0:
            return math.nan
        for bound, c in sorted(self.cumulative.items()):
            if c >= q * total:
                return bound
        return math.inf

    def max_bound(self) -> float:
        """The bound of the highest non-empty bucket (nan if empty)."""
        top = math.nan
        below = 0.0
        for bound, c in sorted(self.cumulative.items()):
            if c > below:
                top = bound
            below = c
        return top


def parse(text: str) -> dict[str, Buckets]:
    """``{"first": Buckets, "later": Buckets}`` from a Prometheus text (empty if absent)."""
    out: dict[str, Buckets] = {}
    for m in _LINE.finditer(text):
        labels = dict(_LABEL.findall(m.group(1)))
        le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
        b = out.setdefault(labels["token"], Buckets())
        b.cumulative[le] = b.cumulative.get(le, 0.0) + float(m.group(2))
    for m in _SUM.finditer(text):
        token = dict(_LABEL.findall(m.group(1))).get("token")
        if token in out:
            out[token].total += float(m.group(2))
    for b in out.values():
        b.cumulative = dict(sorted(b.cumulative.items()))
    return out


def writes(text: str) -> float:
    """Stream writes the emulator made (``lpu:token_delivery_lateness_seconds`` counts one per
    write, first and later), summed over its series."""
    return sum(float(v) for v in _WRITES.findall(text))
