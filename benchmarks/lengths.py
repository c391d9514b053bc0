"""Token-length distributions for prompts and outputs.

A spec string names one distribution, or a weighted mixture of them separated by
``|`` (so prompt lengths can spread requests over several compiled buckets):

* ``fixed:N``
* ``uniform:LO:HI`` - integers, both ends included
* ``lognormal:MEDIAN:SIGMA[:MAX]`` - ``exp(Normal(ln MEDIAN, SIGMA))`` rounded,
  clipped to ``[1, MAX]`` (MAX defaults to 32 * MEDIAN)
* ``0.7*uniform:50:1500|0.3*uniform:2500:7000`` - a mixture, weights normalized

Samples are integers >= 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["LengthDist", "parse_lengths"]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class _Part:
    kind: str
    params: tuple[float, ...]

    def sample(self, n: int, rng: np.random.Generator) -> IntArray:
        if self.kind == "fixed":
            return np.full(n, int(self.params[0]), dtype=np.int64)
        if self.kind == "uniform":
            lo, hi = int(self.params[0]), int(self.params[1])
            return rng.integers(lo, hi + 1, size=n, dtype=np.int64)
        median, sigma, top = self.params
        x = np.rint(np.exp(rng.normal(math.log(median), sigma, size=n)))
        return np.clip(x, 1, top).astype(np.int64)

    def mean(self) -> float:
        if self.kind == "fixed":
            return self.params[0]
        if self.kind == "uniform":
            return (self.params[0] + self.params[1]) / 2.0
        median, sigma, _ = self.params
        return median * math.exp(sigma * sigma / 2.0)  # before clipping


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A (mixture of) length distribution(s); ``spec`` is the string it was parsed from."""

    spec: str
    parts: tuple[_Part, ...]
    weights: tuple[float, ...]

    def sample(self, n: int, rng: np.random.Generator) -> IntArray:
        if len(self.parts) == 1:
            return self.parts[0].sample(n, rng)
        which = rng.choice(len(self.parts), size=n, p=np.asarray(self.weights))
        out = np.empty(n, dtype=np.int64)
        for k, part in enumerate(self.parts):
            sel = which == k
            out[sel] = part.sample(int(sel.sum()), rng)
        return out

    def mean(self) -> float:
        """Mean length (lognormal parts: before clipping)."""
        return sum(w * p.mean() for w, p in zip(self.weights, self.parts, strict=True))

    @property
    def fixed(self) -> int | None:
        """The length when every sample is the same, else None."""
        if len(self.parts) == 1 and self.parts[0].kind == "fixed":
            return int(self.parts[0].params[0])
        return None


def _parse_part(text: str) -> _Part:
    name, _, rest = text.partition(":")
    try:
        nums = [float(v) for v in rest.split(":")] if rest else []
    except ValueError:
        raise ValueError(f"length spec {text!r}: parameters must be numbers") from None
    if name == "fixed" and len(nums) == 1 and nums[0] >= 1 and nums[0] == int(nums[0]):
        return _Part("fixed", (nums[0],))
    if name == "uniform" and len(nums) == 2 and 1 <= nums[0] <= nums[1]:
        return _Part("uniform", (math.floor(nums[0]), math.floor(nums[1])))
    if name == "lognormal" and len(nums) in (2, 3) and nums[0] >= 1 and nums[1] >= 0:
        top = nums[2] if len(nums) == 3 else 32.0 * nums[0]
        if top >= 1:
            return _Part("lognormal", (nums[0], nums[1], float(math.floor(top))))
    raise ValueError(
        f"length spec {text!r}: expected fixed:N, uniform:LO:HI or lognormal:MEDIAN:SIGMA[:MAX]"
        " with lengths >= 1"
    )


def parse_lengths(spec: str) -> LengthDist:
    """Parse a length spec (see the module docstring); raises ValueError with the reason."""
    parts: list[_Part] = []
    weights: list[float] = []
    for item in spec.split("|"):
        item = item.strip()
        weight = 1.0
        if "*" in item:
            w_text, _, item = item.partition("*")
            try:
                weight = float(w_text)
            except ValueError:
                raise ValueError(
                    f"length spec {spec!r}: weight {w_text!r} is not a number"
                ) from None
            if not (weight > 0 and math.isfinite(weight)):
                raise ValueError(f"length spec {spec!r}: weights must be > 0")
        parts.append(_parse_part(item.strip()))
        weights.append(weight)
    total = sum(weights)
    return LengthDist(spec, tuple(parts), tuple(w / total for w in weights))
