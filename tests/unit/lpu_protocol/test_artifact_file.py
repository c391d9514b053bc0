from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from lpu_protocol.artifact import (
    Artifact,
    ArtifactError,
    Timings,
    builtin_artifact,
    builtin_artifact_names,
    load_artifact,
    parse_artifact,
)

GOOD = {
    "artifact": {
        "name": "t",
        "model": "m",
        "version": "1",
        "compiler_version": "c",
        "precision": "fp8",
        "target": "lpu",
        "max_seq_len": 2048,
        "max_output_tokens": 512,
        "slots": 2,
        "prefill_ms": 100.0,
        "per_token_ms": 2.0,
        "compile_time_s": 10,
    }
}


def test_builtins_load_and_are_realistic() -> None:
    names = builtin_artifact_names()
    assert {"llama-3.1-8b-2k", "llama-3.1-8b-8k", "llama-3.1-8b-32k", "llama-3.3-70b-2k"} <= set(
        names
    )
    for name in names:
        a = builtin_artifact(name)
        assert a.name == name
        # Published LPU speeds: hundreds of tokens/s per stream, first token well under 2 s.
        assert 200 <= a.tokens_per_second <= 700
        assert a.prefill_s < 2.0
        assert a.max_output_tokens < a.max_seq_len


def test_schedule_formulas() -> None:
    a = parse_artifact(GOOD)
    assert a.service_time(1) == pytest.approx(0.1)
    assert a.service_time(11) == pytest.approx(0.1 + 10 * 0.002)
    assert a.token_offset(0) == pytest.approx(0.1)
    assert a.token_offset(5) == pytest.approx(0.11)
    assert a.capacity_rps(11) == pytest.approx(2 / 0.12)
    s = a.scaled(0.5)
    assert s.prefill_s == pytest.approx(0.05)
    assert s.per_token_s == pytest.approx(0.001)
    assert s.compile_time_s == pytest.approx(5)
    assert s.timings == Timings(s.prefill_s, s.per_token_s)  # derived again, not copied


T = Timings(prefill_s=0.1, per_token_s=0.002)


@pytest.mark.parametrize(
    ("n", "decode", "service"),
    [(0, 0.0, 0.1), (1, 0.0, 0.1), (2, 0.002, 0.102), (11, 0.02, 0.12)],
    ids=["none-counts-as-one", "one", "two", "eleven"],
)
def test_timings_service_is_prefill_plus_decode(n: int, decode: float, service: float) -> None:
    assert T.decode_s(n) == pytest.approx(decode)
    assert T.service_s(n) == pytest.approx(service)
    assert T.service_s(n) == T.prefill_s + T.decode_s(n)


@pytest.mark.parametrize(
    ("now", "due"),
    [(0.0, 0), (5.0999, 0), (5.1, 1), (5.1019, 1), (5.1021, 2), (9.0, 11)],
    ids=["before-start", "before-first", "first", "before-second", "second", "capped-at-n"],
)
def test_tokens_due_inverts_token_at(now: float, due: int) -> None:
    assert T.tokens_due(11, 5.0, now) == due
    assert T.token_at(3, 5.0) == 5.0 + 0.1 + 3 * 0.002
    for k in range(11):  # a hair past token k's time (the exact instant may round below it)
        assert T.tokens_due(11, 5.0, T.token_at(k, 5.0) + 1e-9) == k + 1


def test_all_errors_reported_with_key_paths() -> None:
    bad = {"artifact": dict(GOOD["artifact"])}
    bad["artifact"].update(slots=0, prefill_ms="fast", model="", extra=1)
    del bad["artifact"]["version"]
    with pytest.raises(ArtifactError) as info:
        parse_artifact(bad, source="x.toml")
    text = "\n".join(info.value.errors)
    for key in ("artifact.slots", "artifact.prefill_ms", "artifact.model", "artifact.version",
                "artifact.extra"):
        assert key in text
    assert len(info.value.errors) == 5


def test_output_cap_must_leave_room_for_prompt() -> None:
    bad = {"artifact": dict(GOOD["artifact"], max_output_tokens=2048)}
    with pytest.raises(ArtifactError, match="max_output_tokens"):
        parse_artifact(bad)


def test_load_from_file_and_by_name(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    src = root / "lpu_protocol" / "artifacts" / "llama-3.1-8b-2k.toml"
    copy = tmp_path / "a.toml"
    copy.write_text(src.read_text())
    assert load_artifact(copy) == builtin_artifact("llama-3.1-8b-2k")
    assert isinstance(load_artifact("llama-3.3-70b-8k"), Artifact)
    broken = tmp_path / "b.toml"
    broken.write_text("[artifact\n")
    with pytest.raises(ArtifactError, match="not valid TOML"):
        load_artifact(broken)
    with pytest.raises(ArtifactError, match="no built-in artifact"):
        load_artifact("nope")
    assert tomllib.loads(src.read_text())["artifact"]["name"] == "llama-3.1-8b-2k"
