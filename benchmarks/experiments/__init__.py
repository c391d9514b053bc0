"""The experiments behind ``lpu-bench sweep``: one module per question, each writing a table,
a plot and its numbers.

Every experiment module exposes ``NAME``, ``TITLE`` and
``run(cfg: SweepConfig, out_dir: Path, quick: bool) -> ExperimentResult``; it starts what
it needs (emulators and router, see :mod:`benchmarks.experiments.rig`), drives open-loop
load with :mod:`benchmarks.loadgen`, and writes ``<NAME>.md``, ``<NAME>.png`` and
``<NAME>.json`` into ``out_dir``. :mod:`benchmarks.experiments.sweep` runs them in order and
writes the index (``README.md``).

No experiment imports another (experiment 2 is two modules, ``exp2_admission`` and its
second part ``variable_lengths``). What several share lives in a module named for what it
holds: ``rig`` (the processes under test), ``drive`` (load and records as arrays),
``policies`` (the admission policies compared), ``schedule`` (the exact FIFO schedule of a
run), ``stats`` (intervals), ``claims`` (prose from the numbers), ``output`` (the files),
``batching_proxy`` (the batching front end).

The backend model shared by all of them (:class:`SweepConfig`): a small custom artifact
whose service time (:meth:`lpu_protocol.artifact.Artifact.service_time`) is a few tens of
milliseconds, so a run of seconds holds hundreds of requests and timer jitter (~1 ms) stays
small against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lpu_protocol.artifact import Artifact

__all__ = ["ExperimentResult", "SweepConfig"]


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """What every experiment shares. Times in seconds."""

    prefill_s: float = 0.012
    per_token_s: float = 0.002
    output_tokens: int = 10
    """Fixed output length of every request, so the service time is one number D."""
    prompt_tokens: int = 100
    ttft_slo_s: float = 0.100
    """The TTFT SLO of the admission experiments (about 3 D of waiting allowed)."""
    seed: int = 1
    isolate: bool = True
    """Emulator and router each in their own process (the full run); False puts them in
    this process's event loop next to the load generator (quick runs and CI)."""
    tick_s: float = 0.002
    """The emulator's delivery quantum (its first token is always written on time)."""
    model: str = "bench-model"

    @property
    def service_s(self) -> float:
        """D: how long one request of ``output_tokens`` holds a slot of :meth:`artifact`."""
        return self.artifact(1).service_time(self.output_tokens)

    def artifact(self, slots: int, *, name: str = "bench", prefill_s: float | None = None,
                 max_seq_len: int = 2048) -> Artifact:
        """A custom artifact of this config's timings with ``slots`` slots."""
        return Artifact(
            name=name, model=self.model, version="bench", compiler_version="bench",
            precision="fp8", target="emulated", max_seq_len=max_seq_len,
            max_output_tokens=min(256, max_seq_len - 1), slots=slots,
            prefill_s=self.prefill_s if prefill_s is None else prefill_s,
            per_token_s=self.per_token_s, compile_time_s=0.0,
        )

    def capacity_rps(self, slots: int) -> float:
        return slots / self.service_s


@dataclass(slots=True)
class ExperimentResult:
    """What an experiment hands back to the sweep (its files are already written)."""

    name: str
    title: str
    table_md: str
    """The markdown table (also in ``<name>.md``)."""
    summary: str
    """A few sentences: what was measured and what it shows, with the headline numbers."""
    plots: list[str] = field(default_factory=list)
    """File names of the plots, relative to the output folder."""
    data: dict[str, Any] = field(default_factory=dict)
    """Everything in ``<name>.json``."""
    elapsed_s: float = 0.0
