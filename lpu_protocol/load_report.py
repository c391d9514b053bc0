"""A backend's own account of its schedule: the ``GET /load`` body, in both directions.

Every backend replica is shared by all router replicas and worker processes,
so only the backend knows the whole schedule. It reports it as JSON::

    {"artifact": "llama-3.1-8b-2k", "version": "2026.11.1", "model": "llama-3.1-8b-instant",
     "compiler_version": "lpuc 0.31.2", "precision": "fp8", "target": "lpu-v1 x8",
     "digest": "sha256:65ba...", "ready": true, "pending_artifact": null, "ready_in_s": 0.0,
     "slots": 8, "running": 8, "waiting": 3, "queue_limit": 64, "time_scale": 1.0,
     "prefill_s": 0.19, "per_token_s": 0.001786,
     "max_seq_len": 2048, "max_output_tokens": 1024,
     "slot_free_in_s": [0.12, 0.12, 0.31, 0.9, 1.1, 1.1, 1.4, 1.9]}

``slot_free_in_s`` holds, ascending, the seconds from the report's instant until
each slot is free once all running and queued work is scheduled FIFO; a new
request would start after ``slot_free_in_s[0]``.

The emulator writes the body with :meth:`LoadReport.to_mapping`, the router reads
it with :meth:`LoadReport.from_mapping`. The schedule fields (``slots`` through
``per_token_s``) are required; ``ready`` defaults to true; the descriptive fields
(which artifact, the queue bound, the time scale, the shape's limits, a pending
swap, the artifact's provenance and content digest) are optional, so a backend that knows
only its schedule can still answer. ``prefill_s`` and ``per_token_s`` are the timings the
backend declares it serves (after any emulator ``time_scale``); ``digest`` is
:attr:`lpu_protocol.artifact.Artifact.digest` of the artifact as compiled.

The same schedule, on every completion answer: :class:`ScheduleReport` is the
``x-lpu-schedule`` response header (:data:`lpu_protocol.headers.X_LPU_SCHEDULE`), the
schedule fields of a report in one short line::

    x-lpu-schedule: 8;8;3;120.000,120.000,310.000,900.000,1100.000,1100.000,1400.000,1900.000

``slots;running;waiting;slot_free_in_ms`` with the free times in milliseconds (3 decimals),
ascending, one per slot, from the instant the answer was written. A router merges it into
that replica's timeline as it merges ``/load`` (the header is optional: a backend without it
changes nothing). :meth:`ScheduleReport.from_header` rejects anything else (a foreign or
hostile backend): at most :data:`MAX_SCHEDULE_SLOTS` slots and :data:`MAX_SCHEDULE_CHARS`
characters, counts and times that are plain non-negative decimals.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final, NamedTuple

__all__ = ["MAX_SCHEDULE_CHARS", "MAX_SCHEDULE_SLOTS", "LoadReport", "ScheduleReport"]


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One ``/load`` answer, validated. Times in seconds, relative to the report."""

    slots: int
    running: int
    waiting: int
    slot_free_in_s: tuple[float, ...]
    """Ascending, one per slot, each >= 0."""
    prefill_s: float
    per_token_s: float
    ready: bool = True
    _: KW_ONLY
    artifact: str | None = None
    """Name of the artifact serving now."""
    version: str | None = None
    model: str | None = None
    pending_artifact: str | None = None
    """Name of the artifact being compiled for a swap (None: no swap under way)."""
    ready_in_s: float = 0.0
    """Seconds until a pending swap is done (0 without one)."""
    queue_limit: int | None = None
    """Requests the backend queues at most (None: unbounded or not said)."""
    time_scale: float | None = None
    """Factor the backend multiplies every compiled duration by (emulators only)."""
    max_seq_len: int | None = None
    max_output_tokens: int | None = None
    compiler_version: str | None = None
    precision: str | None = None
    target: str | None = None
    digest: str | None = None
    """``sha256:<hex>`` of the artifact's canonical description (see lpu_protocol.artifact)."""

    def to_mapping(self) -> dict[str, Any]:
        """The JSON-ready body; :meth:`from_mapping` of it gives back an equal report."""
        return {
            "artifact": self.artifact,
            "version": self.version,
            "model": self.model,
            "compiler_version": self.compiler_version,
            "precision": self.precision,
            "target": self.target,
            "digest": self.digest,
            "ready": self.ready,
            "pending_artifact": self.pending_artifact,
            "ready_in_s": self.ready_in_s,
            "slots": self.slots,
            "running": self.running,
            "waiting": self.waiting,
            "queue_limit": self.queue_limit,
            "time_scale": self.time_scale,
            "prefill_s": self.prefill_s,
            "per_token_s": self.per_token_s,
            "max_seq_len": self.max_seq_len,
            "max_output_tokens": self.max_output_tokens,
            "slot_free_in_s": list(self.slot_free_in_s),
        }

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> LoadReport:
        """Validate a decoded ``/load`` body; raise ValueError naming every bad field.

        Optional fields absent or null take their defaults; present, they are
        checked like the required ones. Unknown keys are ignored.
        """
        errors: list[str] = []

        def count(key: str) -> int:
            v = raw.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                errors.append(f"{key}: expected an integer >= 0, got {v!r}")
                return 0
            return v

        def seconds(key: str, v: object) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float):
                errors.append(f"{key}: expected a finite number >= 0, got {v!r}")
                return 0.0
            if not math.isfinite(v) or v < 0:
                errors.append(f"{key}: expected a finite number >= 0, got {v!r}")
                return 0.0
            return float(v)

        def text(key: str) -> str | None:
            v = raw.get(key)
            if v is None or isinstance(v, str):
                return v
            errors.append(f"{key}: expected a string or null, got {v!r}")
            return None

        def maybe_count(key: str) -> int | None:
            return None if raw.get(key) is None else count(key)

        def maybe_seconds(key: str) -> float | None:
            v = raw.get(key)
            return None if v is None else seconds(key, v)

        slots = count("slots")
        running = count("running")
        waiting = count("waiting")
        free_raw = raw.get("slot_free_in_s")
        free: list[float] = []
        if not isinstance(free_raw, list | tuple):
            errors.append(f"slot_free_in_s: expected a list of numbers, got {free_raw!r}")
        else:
            free = [seconds(f"slot_free_in_s[{i}]", v) for i, v in enumerate(free_raw)]
        prefill = seconds("prefill_s", raw.get("prefill_s"))
        per_token = seconds("per_token_s", raw.get("per_token_s"))
        ready = raw.get("ready", True)
        if not isinstance(ready, bool):
            errors.append(f"ready: expected a boolean, got {ready!r}")
            ready = False
        artifact, version, model = text("artifact"), text("version"), text("model")
        pending = text("pending_artifact")
        compiler, precision = text("compiler_version"), text("precision")
        target, digest = text("target"), text("digest")
        ready_in = maybe_seconds("ready_in_s")
        queue_limit, time_scale = maybe_count("queue_limit"), maybe_seconds("time_scale")
        max_seq_len, max_output = maybe_count("max_seq_len"), maybe_count("max_output_tokens")
        if errors:
            raise ValueError("invalid /load report: " + "; ".join(errors))
        # The backend promises ascending order; sorting costs nothing at c <= 16
        # and keeps the merge sound if one does not.
        return cls(slots, running, waiting, tuple(sorted(free)), prefill, per_token, ready,
                   artifact=artifact, version=version, model=model, pending_artifact=pending,
                   ready_in_s=0.0 if ready_in is None else ready_in, queue_limit=queue_limit,
                   time_scale=time_scale, max_seq_len=max_seq_len, max_output_tokens=max_output,
                   compiler_version=compiler, precision=precision, target=target, digest=digest)


MAX_SCHEDULE_SLOTS: Final = 1024
"""Most slots an ``x-lpu-schedule`` header may list (a bound on what a router parses)."""
MAX_SCHEDULE_CHARS: Final = 16 * MAX_SCHEDULE_SLOTS
"""Longest ``x-lpu-schedule`` value accepted, in characters."""
_COUNT = re.compile(r"(?:0|[1-9][0-9]{0,8})\Z")
"""A count: a plain decimal integer (no sign, no space, no leading zeros), below 10**9."""
_MS = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?\Z")
"""A duration in ms: plain decimal, at most 6 decimals, below 10**9 ms (11.6 days)."""


@functools.lru_cache(maxsize=64)
def _ms_list(n: int) -> str:
    """The %-format template of ``n`` comma-separated times in ms with 3 decimals."""
    return ",".join(["%.3f"] * n)


class ScheduleReport(NamedTuple):
    """The ``x-lpu-schedule`` header's content (see the module docstring). Times in seconds,
    relative to the instant the backend wrote the answer.

    A named tuple: built once per answer on the router's path, where a dataclass's
    validation-free construction still costs more."""

    slots: int
    running: int
    waiting: int
    slot_free_in_s: tuple[float, ...]
    """Ascending, one per slot, each >= 0."""

    @classmethod
    def of(cls, report: LoadReport) -> ScheduleReport:
        """The schedule fields of a ``/load`` report."""
        return cls(report.slots, report.running, report.waiting, report.slot_free_in_s)

    def to_header(self) -> str:
        """The header value; :meth:`from_header` of it gives back this schedule to the ms
        rounding (3 decimals), with free times sorted."""
        free = sorted(self.slot_free_in_s)
        # One %-format of a template per slot count: at hundreds of slots (an emulated LPU
        # node) a format per value was a few % of the backend's CPU. "%.3f" and ":.3f" give
        # the same digits for every float.
        return (f"{self.slots};{self.running};{self.waiting};"
                + _ms_list(len(free)) % tuple([x * 1e3 for x in free]))

    @classmethod
    def from_header(cls, value: str) -> ScheduleReport:
        """Parse a header value; raise ValueError for anything but the exact form.

        Rejected: more than :data:`MAX_SCHEDULE_CHARS` characters, a part missing or extra,
        a count or time that is not a plain non-negative decimal (no sign, exponent, ``nan``
        or ``inf``, spaces), ``slots`` above :data:`MAX_SCHEDULE_SLOTS` or not equal to the
        number of free times, ``running`` above ``slots``. Free times are returned sorted.
        A few microseconds at 8 slots: one split per level, one regex match per field.
        """
        if len(value) > MAX_SCHEDULE_CHARS:
            raise ValueError(f"x-lpu-schedule: longer than {MAX_SCHEDULE_CHARS} characters")
        parts = value.split(";")
        if len(parts) != 4:
            raise ValueError(f"x-lpu-schedule: expected slots;running;waiting;free_ms,"
                             f" got {value[:80]!r}")
        count, ms = _COUNT.match, _MS.match
        if not (count(parts[0]) and count(parts[1]) and count(parts[2])):
            raise ValueError(f"x-lpu-schedule: counts must be integers >= 0, got {value[:80]!r}")
        slots, running, waiting = int(parts[0]), int(parts[1]), int(parts[2])
        raw = parts[3].split(",")
        if not 1 <= slots <= MAX_SCHEDULE_SLOTS or len(raw) != slots or running > slots:
            raise ValueError(f"x-lpu-schedule: {slots} slots, {running} running and"
                             f" {len(raw)} free times do not fit together")
        for x in raw:
            if not ms(x):
                raise ValueError(f"x-lpu-schedule: free time {x[:20]!r} is not ms >= 0")
        free = [float(x) / 1e3 for x in raw]  # divided: the nearest double to the decimal
        free.sort()  # the backend promises ascending; sorting 8 floats keeps the merge sound
        return cls(slots, running, waiting, tuple(free))
