"""The hot-path driver (benchmarks.fidelity_hotpath) on its virtual clock: the same run twice
writes the same bytes and headers, and at a quantum below the token time every token goes out
in a write of its own."""

from __future__ import annotations

from benchmarks.fidelity_hotpath import (
    PER_TOKEN_S,
    PREFILL_S,
    TOKENS,
    measure_admit,
    measure_ticker,
)


def test_ticker_run_is_deterministic_and_writes_tokens_alone() -> None:
    a, b = measure_ticker(20, 1.0), measure_ticker(20, 1.0)
    assert (a.units, a.digest) == (b.units, b.digest)
    # 20 streams, quantum 1.5 ms (< 1.786 ms): one write per later token; each stream spends
    # (TOKENS - 1) * PER_TOKEN_S of every PREFILL_S + TOKENS * PER_TOKEN_S writing.
    busy = (TOKENS - 1) * PER_TOKEN_S / (PREFILL_S + TOKENS * PER_TOKEN_S)
    expected = 20 * busy / PER_TOKEN_S
    assert 0.9 * expected < a.units < 1.1 * expected


def test_admit_run_is_deterministic() -> None:
    a, b = measure_admit(8, 2.0), measure_admit(8, 2.0)
    assert (a.units, a.digest) == (b.units, b.digest)
    # 8 slots, each request holds one for PREFILL_S + TOKENS * PER_TOKEN_S: 2 s of them, and
    # the run ends with the first request to end after 2 s (one more per slot at most).
    ends = 8 * 2.0 / (PREFILL_S + TOKENS * PER_TOKEN_S)
    assert ends <= a.units <= ends + 8
