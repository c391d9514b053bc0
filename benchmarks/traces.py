"""Request traces for the planner: arrival times with prompt and output lengths.

Two formats, told apart by the CSV header (``fmt="auto"``) or named:

* ``project``: this project's trace format (:func:`benchmarks.workload.load_trace`): CSV with
  the header ``t,prompt_tokens,output_tokens[,bucket]`` or JSON lines with those keys, ``t`` in
  seconds from the start;
* ``azure``: the Azure LLM inference trace (2023), CSV with the header
  ``TIMESTAMP,ContextTokens,GeneratedTokens`` and timestamps such as
  ``2023-11-16 18:17:03.9799600`` (any number of fractional digits).

A :class:`Trace` holds arrays sorted by arrival (ties keep file order), times in seconds from the
first arrival. A row that cannot be read raises :class:`TraceError` naming the file and its line
number (the header is line 1).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from benchmarks.workload import load_trace

__all__ = ["AZURE_HEADER", "FORMATS", "Trace", "TraceError", "read_azure", "read_project",
           "read_trace"]

AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
FORMATS = ("auto", "project", "azure")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class TraceError(ValueError):
    """A trace file could not be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests in arrival order: ``at_s[i]`` seconds after the first arrival, the prompt's and
    the output's token counts (each >= 1 output token; prompts >= 0)."""

    name: str
    at_s: FloatArray
    prompt_tokens: IntArray
    output_tokens: IntArray

    def __len__(self) -> int:
        return int(self.at_s.size)

    @property
    def duration_s(self) -> float:
        """First to last arrival, seconds (0 for fewer than two requests)."""
        return float(self.at_s[-1] - self.at_s[0]) if self.at_s.size > 1 else 0.0

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate over the trace's span (requests per second; 0 when it has none)."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else 0.0

    def compressed(self, speedup: float) -> Trace:
        """The same requests with every gap divided by ``speedup`` (> 0): 2 = twice the rate."""
        if not (speedup > 0 and math.isfinite(speedup)):
            raise ValueError(f"speedup must be a finite number > 0, got {speedup!r}")
        return Trace(f"{self.name} x{speedup:g}", self.at_s / speedup, self.prompt_tokens,
                     self.output_tokens)

    def head(self, n: int) -> Trace:
        """The first ``n`` requests."""
        return Trace(self.name, self.at_s[:n], self.prompt_tokens[:n], self.output_tokens[:n])


def _trace(name: str, rows: list[tuple[float, int, int]]) -> Trace:
    rows.sort(key=lambda r: r[0])  # stable: ties keep file order
    at = np.array([r[0] for r in rows], dtype=np.float64)
    if at.size:
        at -= at[0]
    return Trace(name, at, np.array([r[1] for r in rows], dtype=np.int64),
                 np.array([r[2] for r in rows], dtype=np.int64))


def _azure_row(rec: list[str], where: str) -> tuple[int, float, int, int]:
    """(whole seconds since the epoch, fraction, prompt, output): kept apart, because a float
    of seconds since 1970 has a 0.24 us step, coarser than the trace's 0.1 us."""
    if len(rec) != 3:
        raise TraceError(f"{where}: expected 3 fields (TIMESTAMP,ContextTokens,GeneratedTokens),"
                         f" got {len(rec)}")
    stamp, ctx, gen = (v.strip() for v in rec)
    whole, _, frac = stamp.partition(".")
    try:
        secs = round(datetime.fromisoformat(whole).timestamp())
    except ValueError:
        raise TraceError(f"{where}: TIMESTAMP {stamp!r} is not 'YYYY-MM-DD HH:MM:SS[.fff]'"
                         ) from None
    if frac and not frac.isdigit():
        raise TraceError(f"{where}: TIMESTAMP {stamp!r} has a malformed fraction")
    part = int(frac) / 10 ** len(frac) if frac else 0.0
    try:
        p, o = int(ctx), int(gen)
    except ValueError:
        raise TraceError(f"{where}: ContextTokens and GeneratedTokens must be integers,"
                         f" got {ctx!r}, {gen!r}") from None
    if p < 0 or o < 1:
        raise TraceError(f"{where}: ContextTokens must be >= 0 and GeneratedTokens >= 1,"
                         f" got {p}, {o}")
    return secs, part, p, o


def read_azure(path: Path) -> Trace:
    """Read an Azure LLM inference trace (CSV, ``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    raw: list[tuple[int, float, int, int]] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != AZURE_HEADER:
            raise TraceError(f"{path}:1: expected the header {','.join(AZURE_HEADER)},"
                             f" got {header!r}")
        for rec in reader:
            if rec:
                raw.append(_azure_row(rec, f"{path}:{reader.line_num}"))
    base = min((r[0] for r in raw), default=0)
    return _trace(path.name, [(float(s - base) + f, p, o) for s, f, p, o in raw])


def read_project(path: Path) -> Trace:
    """Read this project's CSV/JSONL trace (``t,prompt_tokens,output_tokens[,bucket]``)."""
    try:
        planned = load_trace(path)
    except KeyError as exc:  # a CSV row shorter than the header
        raise TraceError(f"{path}: missing field {exc}") from None
    except ValueError as exc:
        raise TraceError(str(exc)) from None
    return _trace(path.name, [(p.at_s, p.prompt_tokens, p.max_tokens) for p in planned])


def _sniff(path: Path) -> str:
    if path.suffix in (".jsonl", ".json"):
        return "project"
    with path.open(encoding="utf-8", newline="") as fh:
        first = fh.readline()
    names = tuple(h.strip() for h in first.strip().split(","))
    if names == AZURE_HEADER:
        return "azure"
    if names[:3] == ("t", "prompt_tokens", "output_tokens"):
        return "project"
    raise TraceError(f"{path}:1: unknown trace header {first.strip()!r} (expected"
                     f" {','.join(AZURE_HEADER)} or t,prompt_tokens,output_tokens[,bucket])")


def read_trace(path: Path, fmt: str = "auto") -> Trace:
    """Read a trace of format ``fmt`` (one of :data:`FORMATS`); raises :class:`TraceError`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown trace format {fmt!r} (one of {', '.join(FORMATS)})")
    try:
        kind = _sniff(path) if fmt == "auto" else fmt
        trace = read_azure(path) if kind == "azure" else read_project(path)
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not UTF-8 text") from None
    if not len(trace):
        raise TraceError(f"{path}: no requests")
    return trace
