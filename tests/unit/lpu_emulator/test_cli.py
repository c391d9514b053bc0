"""The lpu-emulator command line and the options it builds."""

from __future__ import annotations

import pytest

from lpu_emulator.__main__ import build_parser, main, options_from_args
from lpu_emulator.options import EmulatorOptions
from lpu_protocol.artifact import builtin_artifact, builtin_artifact_names


def test_flags_build_the_options() -> None:
    args = build_parser().parse_args([
        "--artifact", "llama-3.1-8b-2k", "--time-scale", "10", "--max-queue", "4",
        "--output-length", "geometric", "--output-mean", "50", "--seed", "3", "--tick-ms", "2",
        "--write-budget", "0", "--error-rate", "0.1", "--crash-rate", "0.2",
        "--crash-after-tokens", "7", "--stall-rate", "0.3", "--stall-s", "1.5",
    ])
    opts = options_from_args(args)
    assert opts.artifact == builtin_artifact("llama-3.1-8b-2k")
    assert (opts.time_scale, opts.max_queue, opts.seed) == (10.0, 4, 3)
    assert (opts.output_length.kind, opts.output_length.mean) == ("geometric", 50.0)
    assert opts.tick_s == pytest.approx(0.002)
    assert opts.write_budget_per_s is None
    f = opts.faults
    assert (f.error_rate, f.crash_rate, f.crash_after_tokens, f.stall_rate, f.stall_s) == (
        0.1, 0.2, 7, 0.3, 1.5)
    assert opts.strict_params


def test_list_artifacts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list-artifacts"]) == 0
    assert capsys.readouterr().out.split() == builtin_artifact_names()


@pytest.mark.parametrize(
    ("argv", "message"),
    [([], "--artifact is required"),
     (["--artifact", "no-such"], "no built-in artifact"),
     (["--artifact", "llama-3.1-8b-2k", "--time-scale", "0", "--error-rate", "2"],
      "time_scale"),
     (["--artifact", "llama-3.1-8b-2k", "--replicas", "0"], "--replicas")],
    ids=["no-artifact", "unknown-artifact", "bad-values", "bad-replicas"],
)
def test_bad_invocations_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_options_report_every_problem() -> None:
    with pytest.raises(ValueError) as info:
        EmulatorOptions(builtin_artifact("llama-3.1-8b-2k"), time_scale=-1, max_queue=-2,
                        tick_s=5.0, write_budget_per_s=0)
    text = str(info.value)
    for key in ("time_scale", "max_queue", "tick_s", "write_budget_per_s"):
        assert key in text
