"""Trace readers: the Azure LLM trace, the project's CSV/JSONL, their line-numbered errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.traces import Trace, TraceError, read_trace

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:17:03.9799600,4808,10
2023-11-16 18:17:04.0319600,3180,8
2023-11-16 18:17:03.5000000,110,27
2023-11-16 18:17:05,7433,1
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_azure_rows_sorted_and_relative_to_the_first_arrival(tmp_path: Path) -> None:
    t = read_trace(_write(tmp_path, "a.csv", AZURE))
    np.testing.assert_allclose(t.at_s, [0.0, 0.47996, 0.53196, 1.5], atol=1e-6)
    assert t.prompt_tokens.tolist() == [110, 4808, 3180, 7433]
    assert t.output_tokens.tolist() == [27, 10, 8, 1]
    assert t.duration_s == pytest.approx(1.5)


def test_seven_fractional_digits_are_kept(tmp_path: Path) -> None:
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 00:00:00.0000000,1,1\n" \
           "2023-11-16 00:00:00.0000003,1,1\n"
    t = read_trace(_write(tmp_path, "a.csv", text), "azure")
    assert t.at_s[1] == pytest.approx(3e-7, abs=1e-9)


def test_project_csv_and_jsonl_read_the_same(tmp_path: Path) -> None:
    csv = _write(tmp_path, "p.csv", "t,prompt_tokens,output_tokens,bucket\n1.5,812,64,2k\n"
                 "0.5,5120,128,\n")
    jsonl = _write(tmp_path, "p.jsonl", '{"t": 1.5, "prompt_tokens": 812, "output_tokens": 64}\n'
                   '\n{"t": 0.5, "prompt_tokens": 5120, "output_tokens": 128}\n')
    for path in (csv, jsonl):
        t = read_trace(path)
        assert t.at_s.tolist() == [0.0, 1.0]
        assert t.prompt_tokens.tolist() == [5120, 812]
        assert t.output_tokens.tolist() == [128, 64]


def test_compressed_divides_the_gaps() -> None:
    t = Trace("x", np.array([0.0, 1.0, 3.0]), np.array([1, 1, 1]), np.array([1, 1, 1]))
    assert t.compressed(2.0).at_s.tolist() == [0.0, 0.5, 1.5]
    assert t.compressed(2.0).rate_rps == pytest.approx(2 / 1.5)
    with pytest.raises(ValueError, match="speedup"):
        t.compressed(0.0)


BAD = [
    ("azure-stamp", "a.csv", AZURE.replace("2023-11-16 18:17:04.0319600", "yesterday"),
     r"a\.csv:3: TIMESTAMP 'yesterday'"),
    ("azure-fraction", "a.csv", AZURE.replace("04.0319600", "04.03x"), r"a\.csv:3: .*fraction"),
    ("azure-not-integer", "a.csv", AZURE.replace(",3180,", ",31.5,"), r"a\.csv:3: .*integers"),
    ("azure-zero-output", "a.csv", AZURE.replace(",7433,1", ",7433,0"),
     r"a\.csv:5: .*GeneratedTokens >= 1"),
    ("azure-fields", "a.csv", AZURE.replace(",110,27", ",110"), r"a\.csv:4: expected 3 fields"),
    ("azure-header", "a.csv", AZURE.replace("ContextTokens", "Context"), r"a\.csv:1: unknown"),
    ("project-number", "p.csv", "t,prompt_tokens,output_tokens\n0,1,1\nsoon,1,1\n",
     r"p\.csv:3: needs t"),
    ("project-json", "p.jsonl", '{"t": 0, "prompt_tokens": 1, "output_tokens": 1}\n{oops\n',
     r"p\.jsonl:2: not valid JSON"),
    ("empty", "p.csv", "t,prompt_tokens,output_tokens\n", r"p\.csv: no requests"),
]


@pytest.mark.parametrize(("name", "text", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_rows_name_file_and_line(tmp_path: Path, name: str, text: str, match: str) -> None:
    with pytest.raises(TraceError, match=match):
        read_trace(_write(tmp_path, name, text))


def test_the_shipped_trace_reads(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[4] / "shared" / "traces" / "azure_llm_2023_code.csv"
    if not path.is_file():
        pytest.skip("the shared trace is not beside this checkout")
    t = read_trace(path)
    assert len(t) == 8819
    assert t.rate_rps == pytest.approx(2.566, abs=0.001)
    assert np.all(np.diff(t.at_s) >= 0)
