"""The emulator's settings: one frozen dataclass, validated as a whole.

Every field, its unit and default:

* ``artifact``: the compiled schedule served at startup (unscaled).
* ``time_scale`` (default 1.0): every artifact duration (prefill, per token,
  compile time) is multiplied by it. 10 runs the same schedule ten times slower
  (a slow machine, a coarse test); 0.1 ten times faster.
* ``max_queue`` (default None = unbounded): requests allowed to wait for a slot;
  one more that would have to wait gets 503 ``queue_full``. 0 allows no waiting.
* ``output_length`` (default fixed): see :mod:`lpu_emulator.lengths`.
* ``seed`` (default 0): seeds output lengths and fault draws.
* ``faults`` (default off): see :mod:`lpu_emulator.faults`.
* ``tick_s`` (default 0.0015): the smallest delivery quantum, in seconds. A
  stream's first token is written at its due time; after that a stream writes at
  most once per quantum, each write carrying the tokens due by the due time of its
  last one (:mod:`lpu_emulator.ticker`). Below one token time (1.786 ms at LPU
  speed) every token is written alone at its due time while the write budget
  allows (up to ``tick_s * write_budget_per_s`` streams a replica: 37 at the
  defaults); 3 ms writes two tokens at a time (the earlier ~1.8 ms late by design).
* ``write_budget_per_s`` (default 25000): the most stream writes per second over
  all streams of a replica; the quantum grows to ``active_streams /
  write_budget_per_s`` when that is above ``tick_s`` (250 streams: 10 ms). It
  bounds the emulator's CPU: a write costs ~15-20 us of CPU on this 2-core machine
  (the send system call, loopback included, and the Python around it), so ~0.5
  core at the default. None removes the bound.
* ``tokenizer`` (default None): a Hugging Face ``tokenizer.json`` to count
  prompt tokens exactly; None uses the shared estimator.
* ``actual_prefill_factor``, ``actual_per_token_factor`` (default 1.0): the emulator runs
  its schedule with the artifact's prefill / per-token time multiplied by these, while it
  declares (on ``/load`` and ``/v1/models``) the artifact's own: an artifact that lies about
  its timings, or hardware that cannot keep them (1.1: per token 10% slower than declared).
  Applies to every artifact served, a swapped-in one too.
* ``strict_params`` (default True): refuse request fields neither OpenAI nor vLLM's sampling
  extensions define (``lpu_protocol.param_policy.VLLM_SAMPLING_PARAMS``); False accepts any.

Example: ``EmulatorOptions(builtin_artifact("llama-3.1-8b-2k"), time_scale=0.1,
max_queue=32)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lpu_emulator.faults import FaultSettings
from lpu_emulator.lengths import OutputLength
from lpu_protocol.artifact import Artifact

__all__ = ["EmulatorOptions"]


@dataclass(frozen=True)
class EmulatorOptions:
    """Settings of one emulated backend (see the module docstring for each field)."""

    artifact: Artifact
    time_scale: float = 1.0
    max_queue: int | None = None
    output_length: OutputLength = field(default_factory=OutputLength)
    seed: int = 0
    faults: FaultSettings = field(default_factory=FaultSettings)
    tick_s: float = 0.0015
    write_budget_per_s: float | None = 25000.0
    tokenizer: str | None = None
    strict_params: bool = True
    actual_prefill_factor: float = 1.0
    actual_per_token_factor: float = 1.0

    def __post_init__(self) -> None:
        problems = self.errors()
        if problems:
            raise ValueError("invalid emulator options: " + "; ".join(problems))

    def errors(self) -> list[str]:
        """Every problem with these options (empty when valid)."""
        out: list[str] = []
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            out.append(f"time_scale: must be a finite number > 0, got {self.time_scale!r}")
        if self.max_queue is not None and self.max_queue < 0:
            out.append(f"max_queue: must be >= 0 or None, got {self.max_queue!r}")
        if not (math.isfinite(self.tick_s) and 0 <= self.tick_s <= 1.0):
            out.append(f"tick_s: must be in [0, 1] seconds, got {self.tick_s!r}")
        budget = self.write_budget_per_s
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            out.append(f"write_budget_per_s: must be a number > 0 or None, got {budget!r}")
        for name in ("actual_prefill_factor", "actual_per_token_factor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                out.append(f"{name}: must be a finite number > 0, got {v!r}")
        out += self.output_length.errors()
        out += self.faults.errors()
        return out
