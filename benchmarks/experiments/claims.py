"""The sentences a result file states, each computed from that file's own numbers.

A :class:`Claim` is a conclusion, whether this run's figures support it, and the evidence
(the figures checked, shown either way). It reads as the conclusion when its condition holds
and as "<conclusion>: not shown by this run (<evidence>)" when it does not, or when the run
has no figure to check it against. Summaries are built with :func:`paragraph` and
:func:`listing`, which drop what has nothing to say, so no sentence is ever empty.

Every experiment module has ``claims(data) -> list[Claim]`` and ``summarize(data) -> str``
over the mapping it writes to ``<name>.json`` (so the prose can be rebuilt from the committed
numbers without re-running: ``lpu-bench sweep --index-only``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Claim", "config", "est", "finite", "listing", "missing", "ms", "paragraph", "pct",
           "rising", "sentences"]


@dataclass(frozen=True, slots=True)
class Claim:
    """``text``: the conclusion, lower-case, without a final period. ``holds``: this run's
    figures support it. ``evidence``: the figures checked (without parentheses)."""

    text: str
    holds: bool
    evidence: str = ""

    def sentence(self) -> str:
        ev = f" ({self.evidence})" if self.evidence else ""
        head = self.text[:1].upper() + self.text[1:]
        return f"{head}{ev}." if self.holds else f"{head}: not shown by this run{ev}."


def missing(text: str, what: str) -> Claim:
    """``text`` cannot be checked: this run has no ``what``."""
    return Claim(text, False, f"this run has no {what}")


def sentences(claims: Iterable[Claim]) -> str:
    return paragraph(c.sentence() for c in claims)


def paragraph(parts: Iterable[str]) -> str:
    """The non-empty parts, joined by spaces."""
    return " ".join(s for s in (p.strip() for p in parts) if s)


def listing(lead: str, items: Sequence[str], sep: str = "; ") -> str:
    """``"lead: a; b."``, or ``""`` when there are no items (never an empty sentence)."""
    return f"{lead}: {sep.join(items)}." if items else ""


def finite(v: Any) -> bool:
    """A real number (JSON null, NaN and infinities are not)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def est(v: Any) -> float:
    """The estimate of an interval ``[est, lo, hi]`` or a plain number; NaN when missing."""
    if isinstance(v, list | tuple):
        v = v[0] if v else None
    return float(v) if finite(v) else math.nan


def rising(values: Sequence[float], tolerance: float = 0.0) -> bool:
    """Each value above the one before (``tolerance`` > 0: not below it by more than that)."""
    if tolerance > 0:
        return all(b >= a - tolerance for a, b in itertools.pairwise(values))
    return all(b > a for a, b in itertools.pairwise(values))


def ms(seconds: Any, digits: int = 1) -> str:
    """Seconds as milliseconds in prose; ``"-"`` when missing."""
    return f"{seconds * 1e3:.{digits}f}" if finite(seconds) else "-"


def pct(share: Any) -> str:
    return f"{share * 100:.1f}%" if finite(share) else "-"


def config(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``config`` mapping of an experiment's data (empty when absent)."""
    cfg = data.get("config")
    return cfg if isinstance(cfg, Mapping) else {}
