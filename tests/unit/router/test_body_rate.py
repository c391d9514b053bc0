"""The large-body intake rate (router.body_rate) on a virtual clock."""

from __future__ import annotations

import pytest

from router.body_rate import LargeBodyRate

MB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(("steps", "expected"), [
    # (advance s, body bytes) -> None admitted, else the Retry-After in seconds
    ([(0.0, 4 * MB)], [None]),
    ([(0.0, 4 * MB), (0.0, 4 * MB), (0.0, 4 * MB), (0.0, 4 * MB), (0.0, 4 * MB)],
     [None, None, None, None, 0.25]),
    ([(0.0, 16 * MB), (0.0, 4 * MB), (0.25, 4 * MB)], [None, 0.25, None]),
    ([(0.0, 16 * MB), (10.0, 16 * MB), (0.0, 1 * MB)], [None, None, 1 / 16]),
], ids=["one-body", "burst-then-wait", "retry-at-retry-after", "refill-is-capped"])
def test_bytes_per_second_with_honest_retry_after(steps: list[tuple[float, int]],
                                                  expected: list[float | None]) -> None:
    clock = Clock()
    rate = LargeBodyRate(16 * MB, 4 * MB, clock)
    got = []
    for advance, n in steps:
        clock.t += advance
        got.append(rate.take(n))
    assert got == pytest.approx(expected)


def test_a_refused_body_takes_nothing_and_a_chunked_one_can_go_into_debt() -> None:
    clock = Clock()
    rate = LargeBodyRate(1 * MB, 4 * MB, clock)  # burst: one 4 MB body
    assert rate.take(4 * MB) is None
    assert rate.take(1 * MB) == pytest.approx(1.0)
    clock.t += 1.0
    assert rate.take(1 * MB) is None  # the refusal took nothing
    rate.charge(2 * MB)  # read already (chunked): debt
    assert rate.take(1 * MB) == pytest.approx(3.0)
