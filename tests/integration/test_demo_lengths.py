"""``lpu-router demo`` reply lengths: geometric by default (said in ``--help``), exactly
``max_tokens`` with ``--output-length fixed`` - the demo as a real process on loopback."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import pytest

from lpu_demo.stack import DEMO_LENGTH, DEMO_MODEL, demo_length
from lpu_emulator.lengths import OutputLength
from router.__main__ import build_parser


@pytest.mark.parametrize(("argv", "expected"), [
    ([], DEMO_LENGTH),
    (["--output-length", "fixed"], OutputLength("fixed")),
    (["--output-length", "geometric", "--output-mean", "40"], OutputLength("geometric", mean=40.0)),
], ids=["default-geometric", "fixed", "geometric-mean"])
def test_demo_output_length_flags(argv: list[str], expected: OutputLength) -> None:
    args = build_parser().parse_args(["demo", *argv])
    assert demo_length(args.output_length, args.output_mean) == expected


def test_demo_refuses_other_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["demo", "--output-length", "uniform"])
    assert exc.value.code == 2 and "fixed" in capsys.readouterr().err


def test_demo_help_states_the_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "geometric by default (mean 128 tokens" in text
    assert "--output-length fixed gives exactly max_tokens" in text


@pytest.mark.timeout(60)
async def test_demo_fixed_lengths_return_exactly_max_tokens() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "demo", "--port", "0", "--time-scale", "0.1",
        "--replicas", "1", "--output-length", "fixed",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        if not line.startswith("lpu-router demo: router at http://127.0.0.1:"):
            err = b"" if proc.stderr is None else await proc.stderr.read()
            raise AssertionError(f"demo did not start: {line!r} {err.decode()[-2000:]}")
        url = line.split(" at ", 1)[1].split(",", 1)[0]
        async with aiohttp.ClientSession() as session:
            for max_tokens in (7, 200):
                body = {"model": DEMO_MODEL, "max_tokens": max_tokens,
                        "messages": [{"role": "user", "content": "Hello there"}]}
                async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    doc = await resp.json()
                assert doc["usage"]["completion_tokens"] == max_tokens
                assert doc["choices"][0]["finish_reason"] == "length"
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
