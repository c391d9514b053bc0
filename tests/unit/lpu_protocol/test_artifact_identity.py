"""Artifact identity: the content digest and the identity fields of a /load report."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lpu_protocol.artifact import artifact_digest, builtin_artifact, builtin_artifact_names
from lpu_protocol.load_report import LoadReport


def test_digest_is_of_the_canonical_description() -> None:
    art = builtin_artifact("llama-3.1-8b-2k")
    shuffled = dict(reversed(list(art.to_dict().items())))
    assert art.digest == artifact_digest(shuffled)  # key order does not matter
    assert art.digest.startswith("sha256:") and len(art.digest) == len("sha256:") + 64


@pytest.mark.parametrize(("field", "value"), [
    ("compiler_version", "lpuc 0.32.0"), ("precision", "fp16"), ("version", "2026.12.1"),
    ("max_seq_len", 4096), ("per_token_s", 0.002),
], ids=["compiler", "precision", "version", "shape", "timing"])
def test_any_field_changes_the_digest(field: str, value: object) -> None:
    art = builtin_artifact("llama-3.1-8b-2k")
    assert replace(art, **{field: value}).digest != art.digest


def test_builtin_digests_are_distinct_and_provenance_is_filled() -> None:
    arts = [builtin_artifact(n) for n in builtin_artifact_names()]
    assert len({a.digest for a in arts}) == len(arts)
    assert {a.compiler_version for a in arts} >= {"lpuc 0.31.2", "lpuc 0.32.0"}


def test_load_report_carries_identity() -> None:
    report = LoadReport(1, 0, 0, (0.0,), 0.1, 0.002, artifact="a", version="v",
                        model="m", compiler_version="lpuc 1", precision="fp8",
                        target="lpu-v1 x8", digest="sha256:00", max_seq_len=2048)
    assert LoadReport.from_mapping(report.to_mapping()) == report
    bad = report.to_mapping() | {"digest": 5}
    with pytest.raises(ValueError, match="digest"):
        LoadReport.from_mapping(bad)
