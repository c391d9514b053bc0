"""One record per planned request, and how records are written and read.

Times in a record are seconds. ``intended_s`` and ``sent_s`` are offsets from the
start of the run; every latency (``ttft_s``, ``e2e_s``) is measured from the
*intended* send time, so a late sender inflates latency instead of hiding it (no
coordinated omission).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = ["ClientOutcome", "RequestRecord", "read_jsonl", "write_csv", "write_jsonl"]


class ClientOutcome(StrEnum):
    """How a request ended, seen from the client. Exactly one per planned request."""

    COMPLETED = "completed"
    """HTTP 200 and the stream ended with ``[DONE]``."""
    REJECTED = "rejected"
    """HTTP 429 (admission control or rate limit); ``retry_after_s`` holds its header."""
    FAILED = "failed"
    """Any other HTTP status, a broken stream or a connection error."""
    TIMED_OUT = "timed_out"
    """Still unfinished when the run's drain deadline passed; cancelled by the client."""


@dataclass(slots=True)
class RequestRecord:
    index: int
    intended_s: float
    prompt_tokens: int
    """Planned prompt length (the usage chunk's count goes to ``usage_prompt_tokens``)."""
    max_tokens: int
    bucket: str | None = None
    sent_s: float | None = None
    outcome: str = ClientOutcome.FAILED.value
    status: int = 0
    """HTTP status; 0 when no response arrived."""
    ttft_s: float | None = None
    """First content token arrival minus intended send time."""
    e2e_s: float | None = None
    """End of stream (or of the error response) minus intended send time."""
    tokens: int = 0
    """Content chunks received (one token each from the emulator)."""
    completion_tokens: int | None = None
    """From the usage chunk, when the server sent one."""
    usage_prompt_tokens: int | None = None
    itl_mean_s: float | None = None
    itl_max_s: float | None = None
    retry_after_s: float | None = None
    error: str | None = None
    gaps_s: list[float] | None = None
    """Every inter-token gap, only when the run keeps them (``--keep-gaps``)."""

    @property
    def tpot_s(self) -> float | None:
        """(e2e - ttft) / (n - 1) over this request's n tokens; None below two tokens."""
        if self.ttft_s is None or self.e2e_s is None or self.tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.gaps_s is None:
            del out["gaps_s"]
        return out


_FIELDS = [f.name for f in fields(RequestRecord)]


def write_jsonl(path: Path, records: list[RequestRecord]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r.to_dict(), separators=(",", ":")) + "\n")


def read_jsonl(path: Path) -> list[RequestRecord]:
    out: list[RequestRecord] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                raw = json.loads(line)
                out.append(RequestRecord(**{k: v for k, v in raw.items() if k in _FIELDS}))
    return out


def write_csv(path: Path, records: list[RequestRecord]) -> None:
    """One row per request (without the per-gap list)."""
    cols = [c for c in _FIELDS if c != "gaps_s"]
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})
