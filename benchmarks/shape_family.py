"""Compilable shapes of one model: the shipped artifacts and shapes derived from them.

The planner may recommend a shape nobody compiled yet (a 4K between the shipped 2K and 8K).
Its schedule is derived from the model's shipped artifacts (its *family*: the built-in artifacts
of one ``model``), by these rules, exact at every shipped shape:

* ``prefill_ms``: piecewise linear in ``max_seq_len`` through the shipped shapes, the first and
  last segment extended beyond them (the padded prefill grows with the shape; the shipped 8B
  shapes lie within 1 % of one line, 44 ms + 17.7 us per token), never below 1 ms; with one
  shipped shape, proportional to the length;
* ``slots``, ``per_token_ms``, ``precision``, ``target``: those of the smallest shipped shape at
  least as long (the largest one's beyond it): a longer shape holds no more sequences;
* ``max_output_tokens``: that shape's cap, at most half the length;
* ``compile_time_s``: interpolated like the prefill.

A derived artifact's ``version`` is ``"derived"`` and its name the family's prefix with the
length (``llama-3.1-8b-4k``), so it is never mistaken for a shipped one.
"""

from __future__ import annotations

import re
from dataclasses import replace

from lpu_protocol.artifact import Artifact, builtin_artifact, builtin_artifact_names

__all__ = ["DERIVED_VERSION", "derive_shape", "family", "family_of", "power_of_two_lengths",
           "shapes"]

DERIVED_VERSION = "derived"
_SUFFIX = re.compile(r"-\d+k$")


def family(model: str) -> list[Artifact]:
    """The shipped artifacts of ``model``, shortest shape first (ValueError when none)."""
    arts = [builtin_artifact(n) for n in builtin_artifact_names()]
    out = sorted((a for a in arts if a.model == model), key=lambda a: a.max_seq_len)
    if not out:
        models = sorted({a.model for a in arts})
        raise ValueError(f"no shipped artifact of model {model!r} (known: {', '.join(models)})")
    return out


def family_of(artifact_name: str) -> list[Artifact]:
    """The family of the shipped artifact ``artifact_name`` (ArtifactError if unknown)."""
    return family(builtin_artifact(artifact_name).model)


def power_of_two_lengths(lo: int = 1024, hi: int = 32768) -> list[int]:
    """``lo, 2 lo, ...`` up to ``hi`` (both powers of two)."""
    out, n = [], lo
    while n <= hi:
        out.append(n)
        n *= 2
    return out


def _interp(length: int, xs: list[int], ys: list[float]) -> float:
    if len(xs) == 1:
        return ys[0] * length / xs[0]
    i = 1
    while i < len(xs) - 1 and length > xs[i]:
        i += 1
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (length - x0) / (x1 - x0)


def derive_shape(fam: list[Artifact], max_seq_len: int) -> Artifact:
    """The family's schedule at ``max_seq_len`` (a shipped artifact itself when one has it)."""
    if max_seq_len < 2:
        raise ValueError(f"a shape holds at least 2 tokens, got {max_seq_len}")
    for a in fam:
        if a.max_seq_len == max_seq_len:
            return a
    lens = [a.max_seq_len for a in fam]
    like = next((a for a in fam if a.max_seq_len >= max_seq_len), fam[-1])
    prefill_ms = max(1.0, _interp(max_seq_len, lens, [a.prefill_s * 1e3 for a in fam]))
    compile_s = max(0.0, _interp(max_seq_len, lens, [a.compile_time_s for a in fam]))
    prefix = _SUFFIX.sub("", fam[0].name)
    size = f"{max_seq_len // 1024}k" if max_seq_len % 1024 == 0 else str(max_seq_len)
    return replace(like, name=f"{prefix}-{size}", version=DERIVED_VERSION,
                   max_seq_len=max_seq_len,
                   max_output_tokens=min(like.max_output_tokens, max_seq_len // 2),
                   prefill_s=prefill_ms / 1e3, compile_time_s=compile_s)


def shapes(fam: list[Artifact], lengths: list[int]) -> list[Artifact]:
    """One artifact per length (sorted, duplicates dropped)."""
    return [derive_shape(fam, n) for n in sorted(set(lengths))]
