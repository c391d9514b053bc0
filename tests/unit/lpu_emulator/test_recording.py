"""The recorded schedule on a manual clock: each entry is the engine's own job, read when asked,
so a start moved by a cancellation is reported where it ended up; the buffer is bounded."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lpu_emulator.engine import Engine
from lpu_emulator.recording import ScheduleRecording
from lpu_protocol.artifact import builtin_artifact

if TYPE_CHECKING:
    from conftest import ManualClock

ART = replace(builtin_artifact("llama-3.1-8b-2k"), slots=1, prefill_s=0.1, per_token_s=0.01)


def test_entries_are_the_jobs_as_they_end_up(manual_clock: ManualClock) -> None:
    engine = Engine(ART)
    rec = ScheduleRecording(manual_clock)
    first = engine.submit(manual_clock(), 11)  # holds the slot 0.2 s
    rec.add("a", first, ART.slots, "250")
    manual_clock.advance(0.05)
    second = engine.submit(manual_clock(), 11)
    rec.add("b", second, ART.slots, None)
    assert rec.entries("b")[0]["start"] == first.end  # queued behind the first
    manual_clock.advance(0.05)
    engine.cancel(first, manual_clock())  # frees the slot now: the second starts now
    a, b = rec.entries()
    assert (a["state"], a["end"], a["deadline_s"]) == ("cancelled", 0.1, 0.25)
    assert b == {
        "request_id": "b", "arrival": 0.05, "start": 0.1, "first_token": 0.1 + 0.1,
        "last_token": 0.1 + 0.1 + 10 * 0.01, "end": 0.1 + ART.service_time(11),
        "output_tokens": 11, "state": "running", "slots": 1, "deadline_s": None,
    }
    assert rec.entries("nobody") == []


def test_the_buffer_keeps_the_newest(manual_clock: ManualClock) -> None:
    engine = Engine(ART)
    rec = ScheduleRecording(manual_clock, capacity=3)
    for i in range(5):
        rec.add(f"r{i}", engine.submit(manual_clock(), 1), ART.slots, None)
        manual_clock.advance(1.0)
    assert len(rec) == 3
    assert [e["request_id"] for e in rec.entries()] == ["r2", "r3", "r4"]
    assert rec.clock() == 5.0
