"""An artifact that lies: the emulator declares the artifact's timings and runs others."""

from __future__ import annotations

import pytest

from lpu_emulator.__main__ import build_parser, options_from_args
from lpu_emulator.backend import Backend
from lpu_emulator.metrics import make_metrics
from lpu_emulator.options import EmulatorOptions
from lpu_protocol.artifact import builtin_artifact

ART = builtin_artifact("llama-3.1-8b-2k")


def test_flags_set_the_factors_and_the_fail_share() -> None:
    opts = options_from_args(build_parser().parse_args([
        "--artifact", ART.name, "--actual-per-token-factor", "1.1",
        "--actual-prefill-factor", "1.5", "--fail-share", "0.2"]))
    assert (opts.actual_per_token_factor, opts.actual_prefill_factor) == (1.1, 1.5)
    assert opts.faults.error_rate == 0.2


@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan")], ids=["zero", "negative", "nan"])
def test_factors_must_be_positive(factor: float) -> None:
    with pytest.raises(ValueError, match="actual_per_token_factor"):
        EmulatorOptions(ART, actual_per_token_factor=factor)


def test_declares_the_artifact_and_runs_slower() -> None:
    opts = EmulatorOptions(ART, time_scale=0.5, actual_per_token_factor=1.1)
    backend = Backend(opts, clock=lambda: 0.0, metrics=make_metrics())
    report = backend.load()
    assert (report.prefill_s, report.per_token_s) == (ART.prefill_s * 0.5, ART.per_token_s * 0.5)
    assert report.digest == ART.digest  # the artifact as compiled, before the time scale
    assert (report.compiler_version, report.precision, report.target) == (
        ART.compiler_version, ART.precision, ART.target)
    run = backend.schedule.artifact
    assert run.per_token_s == pytest.approx(ART.per_token_s * 0.5 * 1.1)
    assert run.prefill_s == ART.prefill_s * 0.5
