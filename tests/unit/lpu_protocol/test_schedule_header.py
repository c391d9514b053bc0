"""The ``x-lpu-schedule`` header: what the emulator writes the router reads back, and junk
from a foreign or hostile backend is refused, never half-read."""

from __future__ import annotations

import pytest

from lpu_protocol.load_report import (
    MAX_SCHEDULE_CHARS,
    MAX_SCHEDULE_SLOTS,
    LoadReport,
    ScheduleReport,
)

BUSY = ScheduleReport(4, 4, 3, (0.12, 0.12, 0.3105, 1.9))


def test_round_trip_to_the_millisecond() -> None:
    value = BUSY.to_header()
    assert value == "4;4;3;120.000,120.000,310.500,1900.000"
    assert ScheduleReport.from_header(value) == BUSY


def test_free_times_come_back_sorted() -> None:
    got = ScheduleReport.from_header("3;1;0;5.5,0,2")
    assert got == ScheduleReport(3, 1, 0, (0.0, 0.002, 0.0055))
    assert ScheduleReport(3, 1, 0, (0.005, 0.0, 0.002)).to_header() == "3;1;0;0.000,2.000,5.000"


def test_of_a_load_report_keeps_its_schedule() -> None:
    lr = LoadReport(2, 1, 0, (0.0, 0.4), 0.1, 0.01)
    assert ScheduleReport.of(lr) == ScheduleReport(2, 1, 0, (0.0, 0.4))


@pytest.mark.parametrize(
    "value",
    ["", "4;4;3", "4;4;3;1,2,3,4;5", "4;4;3;1,2,3", "4;4;3;1,2,3,4,5", "x;4;3;1,2,3,4",
     "-1;0;0;", "4;-4;3;1,2,3,4", "4;4;+3;1,2,3,4", "4;5;0;1,2,3,4", "0;0;0;",
     "2;0;0;1,nan", "2;0;0;1,inf", "2;0;0;1,-1", "2;0;0;1,1e3", "2;0;0;1, 2", "2;0;0;1,",
     "2;0;0;1,2.1234567", "2;0;0;1,0x10", "04;0;0;1,2,3,4", "2;0;0;1,1234567890",
     "1;0;0;٣", "2;0;0;1;2", "2; 0;0;1,2"],
    ids=["empty", "three-parts", "five-parts", "fewer-times", "more-times", "count-not-number",
         "negative-slots", "negative-running", "signed-waiting", "running-above-slots",
         "no-slots", "nan", "inf", "negative-time", "exponent", "space", "trailing-comma",
         "seven-decimals", "hex", "leading-zero", "absurd-time", "non-ascii-digit",
         "semicolon-in-times", "space-in-counts"],
)
def test_malformed_values_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="x-lpu-schedule"):
        ScheduleReport.from_header(value)


def test_size_is_bounded() -> None:
    n = MAX_SCHEDULE_SLOTS
    ok = ScheduleReport(n, 0, 0, (0.0,) * n).to_header()
    assert ScheduleReport.from_header(ok).slots == n
    too_many = ScheduleReport(n + 1, 0, 0, (0.0,) * (n + 1)).to_header()
    with pytest.raises(ValueError, match="do not fit"):
        ScheduleReport.from_header(too_many)
    with pytest.raises(ValueError, match="longer than"):
        ScheduleReport.from_header("1;0;0;" + "0" * MAX_SCHEDULE_CHARS)
