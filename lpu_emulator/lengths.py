"""Output lengths: exactly the allowance by default, or a seeded distribution.

``fixed`` (default): every request produces its whole allowance
(``max_tokens``, or the artifact's cap), so the queue is exactly M/D/c and
``finish_reason`` is ``length``.

``uniform`` and ``geometric`` emulate a model that chooses when to stop. A
request that carries a ``seed`` gets a length drawn from a generator keyed by
its prompt and its seed only, so it is the same on every run and every
replica. Other requests draw from the emulator's own generator (``seed``) in
arrival order, reproducible for the same request sequence. The
draw is clipped to ``[1, allowance]``; a draw that reaches the allowance ends
with ``length``, any other with ``stop``.

Example: ``OutputLength("geometric", mean=200)`` gives lengths with mean about
200 tokens (fewer when the allowance clips them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["LengthKind", "OutputLength", "draw_length"]

LengthKind = Literal["fixed", "uniform", "geometric"]


@dataclass(frozen=True, slots=True)
class OutputLength:
    """How many tokens a request produces.

    ``kind``: ``fixed`` | ``uniform`` | ``geometric``.
    ``low``, ``high``: bounds in tokens of ``uniform`` (inclusive; ``high`` None
    means the allowance).
    ``mean``: mean in tokens of ``geometric`` (>= 1).
    """

    kind: LengthKind = "fixed"
    low: int = 1
    high: int | None = None
    mean: float = 128.0

    def errors(self) -> list[str]:
        """Every problem with these settings (empty when valid)."""
        out: list[str] = []
        if self.kind not in ("fixed", "uniform", "geometric"):
            out.append(f"output_length.kind: expected fixed|uniform|geometric, got {self.kind!r}")
        if self.low < 1:
            out.append(f"output_length.low: must be >= 1, got {self.low}")
        if self.high is not None and self.high < self.low:
            out.append(f"output_length.high: must be >= low ({self.low}), got {self.high}")
        if not self.mean >= 1.0:
            out.append(f"output_length.mean: must be >= 1, got {self.mean}")
        return out


def draw_length(
    spec: OutputLength, allowance: int, rng: np.random.Generator
) -> tuple[int, Literal["length", "stop"]]:
    """Tokens to produce for a request allowed ``allowance`` (>= 1), and its finish reason."""
    if spec.kind == "fixed":
        return allowance, "length"
    if spec.kind == "uniform":
        high = allowance if spec.high is None else spec.high
        low = min(spec.low, high)
        want = int(rng.integers(low, high + 1))
    else:
        want = int(rng.geometric(1.0 / spec.mean))
    if want >= allowance:
        return allowance, "length"
    return max(want, 1), "stop"
