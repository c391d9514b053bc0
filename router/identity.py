"""What a replica says it serves, and whether that fits the bucket it stands behind.

A backend's ``/load`` report (:class:`lpu_protocol.load_report.LoadReport`) carries the identity
of the artifact it serves: name, version, model, provenance (compiler version, precision,
target), content digest, shape (``max_seq_len``, ``max_output_tokens``, slots) and the timings
it declares. :class:`ReplicaIdentity` is that part of a report, kept per replica by the pool
(:mod:`router.pool`), exported as ``lpu_router_backend_artifact_info`` and shown on
``/admin/backends``.

:func:`shape_mismatch` is the one rule for "this replica cannot serve this bucket": a replica
compiled at 2K behind an 8K bucket would fail every long prompt, so such a replica is not
admitted to. Only what the replica reports is compared (a field it leaves out never
mismatches), so a backend without an identity is judged by health alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lpu_protocol.load_report import LoadReport
from router.bucket_config import BucketConfig

__all__ = ["ReplicaIdentity", "shape_mismatch"]


@dataclass(frozen=True, slots=True)
class ReplicaIdentity:
    """The identity fields of one ``/load`` report (None: not reported). Times in seconds."""

    artifact: str | None
    version: str | None
    model: str | None
    compiler_version: str | None
    precision: str | None
    target: str | None
    digest: str | None
    max_seq_len: int | None
    max_output_tokens: int | None
    slots: int
    prefill_s: float
    per_token_s: float

    @classmethod
    def of(cls, report: LoadReport) -> ReplicaIdentity:
        return cls(report.artifact, report.version, report.model, report.compiler_version,
                   report.precision, report.target, report.digest, report.max_seq_len,
                   report.max_output_tokens, report.slots, report.prefill_s, report.per_token_s)

    @property
    def info_labels(self) -> tuple[str, str, str, str]:
        """``(artifact, version, compiler, digest)`` of the info metric ("" when not reported)."""
        return (self.artifact or "", self.version or "", self.compiler_version or "",
                self.digest or "")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def shape_mismatch(identity: ReplicaIdentity, bucket: BucketConfig) -> str | None:
    """Why the replica's reported shape does not fit ``bucket`` (None: it fits).

    Compared: ``max_seq_len`` (equal to the bucket's: the compiled shape), ``max_output_tokens``
    (at least the bucket's cap: a bucket may lower its artifact's cap, never raise it), and the
    model (the reported model or artifact name is the bucket's public or upstream model name).
    """
    problems: list[str] = []
    if identity.max_seq_len is not None and identity.max_seq_len != bucket.max_seq_len:
        problems.append(f"max_seq_len {identity.max_seq_len} != bucket's {bucket.max_seq_len}")
    out = identity.max_output_tokens
    if out is not None and out < bucket.max_output_tokens:
        problems.append(f"max_output_tokens {out} < bucket's {bucket.max_output_tokens}")
    names = {bucket.model, bucket.upstream_model or bucket.model}
    reported = {n for n in (identity.model, identity.artifact) if n is not None}
    if reported and not reported & names:
        problems.append(f"model {identity.model!r} is not the bucket's {bucket.model!r}")
    return "; ".join(problems) or None
