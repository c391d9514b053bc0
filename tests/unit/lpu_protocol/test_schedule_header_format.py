"""``ScheduleReport.to_header`` formats every free time as ``f"{x * 1e3:.3f}"`` did, at any
slot count: the router reads the same digits whichever way the backend formats them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lpu_protocol.load_report import ScheduleReport


def _per_value(r: ScheduleReport) -> str:
    free = ",".join(f"{x * 1e3:.3f}" for x in sorted(r.slot_free_in_s))
    return f"{r.slots};{r.running};{r.waiting};{free}"


@settings(max_examples=200, deadline=None)
@given(free=st.lists(st.floats(0.0, 1e4, allow_nan=False) | st.sampled_from(
    [0.0, 0.0000625, 0.0005, 0.0014995, 0.0015005, 2.5e-7]), min_size=1, max_size=300),
    running=st.integers(0, 300), waiting=st.integers(0, 50))
def test_same_digits_as_one_format_per_value(
    free: list[float], running: int, waiting: int
) -> None:
    r = ScheduleReport(len(free), min(running, len(free)), waiting, tuple(free))
    assert r.to_header() == _per_value(r)


def test_hundreds_of_slots() -> None:
    r = ScheduleReport(250, 250, 0, tuple(i * 0.0024683 for i in range(250)))
    value = r.to_header()
    assert value == _per_value(r)
    assert ScheduleReport.from_header(value).slot_free_in_s[1] == 0.002468
