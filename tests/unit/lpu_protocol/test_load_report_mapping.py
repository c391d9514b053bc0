"""LoadReport: the ``/load`` body written by the emulator and read by the router is one type."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lpu_protocol.load_report import LoadReport

FULL = LoadReport(
    2, 2, 1, (0.05, 0.3), 0.19, 0.001786, ready=False,
    artifact="llama-3.1-8b-2k", version="2026.11.1", model="llama-3.1-8b-instant",
    pending_artifact="llama-3.1-8b-8k", ready_in_s=1.5, queue_limit=64, time_scale=0.5,
    max_seq_len=2048, max_output_tokens=1024,
)
BARE = LoadReport(4, 0, 0, (0.0, 0.0, 0.0, 0.0), 0.1, 0.01)


@pytest.mark.parametrize("report", [FULL, BARE], ids=["every-field", "schedule-only"])
def test_round_trip_through_json(report: LoadReport) -> None:
    wire = json.loads(json.dumps(report.to_mapping()))
    assert LoadReport.from_mapping(wire) == report


def test_schedule_only_body_takes_the_defaults() -> None:
    raw = {"slots": 2, "running": 1, "waiting": 0, "slot_free_in_s": [0.4, 0.0],
           "prefill_s": 0.1, "per_token_s": 0.01}
    got = LoadReport.from_mapping(raw)
    assert got == LoadReport(2, 1, 0, (0.0, 0.4), 0.1, 0.01)  # sorted on the way in
    assert (got.ready, got.artifact, got.queue_limit, got.ready_in_s) == (True, None, None, 0.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [("artifact", 3), ("queue_limit", -1), ("queue_limit", True), ("time_scale", "fast"),
     ("ready_in_s", float("nan")), ("max_seq_len", 2.5)],
    ids=["name-not-text", "negative-bound", "bool-bound", "scale-not-number", "nan-wait",
         "fractional-length"],
)
def test_a_present_optional_field_is_validated(key: str, value: Any) -> None:
    raw = BARE.to_mapping() | {key: value}
    with pytest.raises(ValueError, match=key):
        LoadReport.from_mapping(raw)
