"""The large-body intake rate (router.body_rate) on a virtual clock."""

from __future__ import annotations

import pytest

from router.body_rate import MAX_WAIT_S, LargeBodyRate

MB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(("steps", "expected"), [
    # (advance s, body bytes) -> the wait before reading it (0: at once)
    ([(0.0, 4 * MB)], [0.0]),
    ([(0.0, 4 * MB)] * 6, [0.0, 0.0, 0.0, 0.0, 0.25, 0.5]),
    ([(0.0, 16 * MB), (0.0, 4 * MB), (0.25, 4 * MB)], [0.0, 0.25, 0.25]),
    ([(0.0, 16 * MB), (10.0, 16 * MB), (0.0, 1 * MB)], [0.0, 0.0, 1 / 16]),
    ([(0.0, 16 * MB), (0.0, 16 * MB), (0.0, 4 * MB)], [0.0, 1.0, 1.25]),
], ids=["one-body", "burst-then-queue", "queue-drains-with-time", "refill-is-capped",
        "past-max-wait-reserves-nothing"])
def test_waits_follow_the_rate(steps: list[tuple[float, int]], expected: list[float]) -> None:
    clock = Clock()
    rate = LargeBodyRate(16 * MB, 4 * MB, clock)
    got = []
    for advance, n in steps:
        clock.t += advance
        got.append(rate.reserve(n))
    assert got == pytest.approx(expected)


def test_a_refused_body_reserves_nothing_and_its_retry_after_is_honest() -> None:
    clock = Clock()
    rate = LargeBodyRate(1 * MB, 4 * MB, clock)  # burst: one 4 MB body
    assert rate.reserve(4 * MB) == 0.0
    wait = rate.reserve(2 * MB)
    assert wait == pytest.approx(2.0) and wait > MAX_WAIT_S  # refused, nothing reserved
    clock.t += wait - MAX_WAIT_S  # its Retry-After
    assert rate.reserve(2 * MB) == pytest.approx(MAX_WAIT_S)  # now it waits at most that
    rate.charge(1 * MB)  # a chunked body, read already: debt
    assert rate.reserve(1 * MB) > MAX_WAIT_S
