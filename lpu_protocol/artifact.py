"""Compiled artifacts: the static schedule of one model at one shape.

An artifact file (TOML) describes what a compiler produced for one shape. On a
deterministic accelerator the service time of a request is a property of that
schedule, never of the data:

* prefill takes ``prefill_ms`` whatever the prompt length, because the prompt is
  padded to the compiled shape (a 300-token prompt in a 2048-token artifact costs
  what a 2000-token one does);
* the first output token is produced by prefill, every further token takes
  ``per_token_ms``.

So a request that produces ``n >= 1`` tokens occupies one slot for exactly
``service_time(n) = prefill + (n - 1) * per_token`` seconds, its token ``k``
(0-based) leaves at ``start + prefill + k * per_token``. These two formulas are
written once, in :class:`Timings`; the artifact, the router's replica shape and
the emulator's engine all hold one and ask it.

An artifact's identity is its description (every field below) and a content
digest: ``sha256:`` and the hex SHA-256 of the canonical JSON of
:meth:`Artifact.to_dict` (keys sorted, no spaces, UTF-8). Two files that describe
the same schedule have the same digest whatever their layout or comments; any
change of a field (a recompile with another compiler, a new precision) changes it.
A backend reports the digest of the artifact as compiled, before any emulator
``time_scale``.

Example::

    [artifact]
    name = "llama-3.1-8b-2k"
    model = "llama-3.1-8b-instant"
    version = "2026.11.1"
    compiler_version = "lpuc 0.31.2"
    precision = "fp8"
    target = "lpu-v1 x8"
    max_seq_len = 2048
    max_output_tokens = 1024
    slots = 4
    prefill_ms = 120.0
    per_token_ms = 1.786
    compile_time_s = 40.0
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "Artifact",
    "ArtifactError",
    "Timings",
    "artifact_digest",
    "builtin_artifact",
    "builtin_artifact_names",
    "load_artifact",
    "parse_artifact",
]


class ArtifactError(ValueError):
    """An artifact failed validation; ``errors`` holds every problem with its key path."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: invalid artifact:\n" + "\n".join(f"  {e}" for e in errors))


@dataclass(frozen=True, slots=True)
class Timings:
    """The two durations of a compiled schedule, and the only place they are combined.

    ``prefill_s`` (> 0): slot start to the first token, whatever the prompt length.
    ``per_token_s`` (> 0): each further token. Every time here is in seconds.
    """

    prefill_s: float
    per_token_s: float

    def decode_s(self, output_tokens: int) -> float:
        """Seconds after the first token until the last of ``output_tokens`` (0 for n <= 1)."""
        return (max(output_tokens, 1) - 1) * self.per_token_s

    def service_s(self, output_tokens: int) -> float:
        """Seconds a request producing ``output_tokens`` holds its slot (n < 1 counts as 1)."""
        return self.prefill_s + self.decode_s(output_tokens)

    def token_at(self, k: int, start: float = 0.0) -> float:
        """When token ``k`` (0-based) is ready for a slot that started at ``start``.

        With the default ``start`` it is the offset from the slot start. Summed
        left to right (``start + prefill + k * per_token``) so that every caller
        gets the same float for the same token.
        """
        return start + self.prefill_s + k * self.per_token_s

    def tokens_due(self, output_tokens: int, start: float, now: float) -> int:
        """Tokens ready at ``now`` for a slot started at ``start``: 0 before the first,
        at most ``output_tokens``; the inverse of :meth:`token_at`."""
        first = start + self.prefill_s
        if now < first:
            return 0
        return min(output_tokens, int((now - first) / self.per_token_s) + 1)


@dataclass(frozen=True, slots=True)
class Artifact:
    """One compiled schedule. Times are in seconds; ``timings`` follows the two durations."""

    name: str
    model: str
    version: str
    compiler_version: str
    precision: str
    target: str
    max_seq_len: int
    max_output_tokens: int
    slots: int
    prefill_s: float
    per_token_s: float
    compile_time_s: float
    timings: Timings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived, never passed: ``replace(scaled durations)`` recomputes it.
        object.__setattr__(self, "timings", Timings(self.prefill_s, self.per_token_s))

    def service_time(self, output_tokens: int) -> float:
        """Seconds a request producing ``output_tokens`` (>= 1) holds its slot."""
        return self.timings.service_s(output_tokens)

    def token_offset(self, k: int) -> float:
        """Seconds from slot start until token ``k`` (0-based) is ready."""
        return self.timings.token_at(k)

    @property
    def tokens_per_second(self) -> float:
        return 1.0 / self.per_token_s

    def capacity_rps(self, output_tokens: int) -> float:
        """Requests per second the artifact completes when every request makes ``output_tokens``."""
        return self.slots / self.service_time(output_tokens)

    def scaled(self, time_scale: float) -> Artifact:
        """The same schedule with every duration multiplied by ``time_scale``."""
        from dataclasses import replace

        return replace(
            self,
            prefill_s=self.prefill_s * time_scale,
            per_token_s=self.per_token_s * time_scale,
            compile_time_s=self.compile_time_s * time_scale,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "version": self.version,
            "compiler_version": self.compiler_version,
            "precision": self.precision,
            "target": self.target,
            "max_seq_len": self.max_seq_len,
            "max_output_tokens": self.max_output_tokens,
            "slots": self.slots,
            "prefill_ms": self.prefill_s * 1e3,
            "per_token_ms": self.per_token_s * 1e3,
            "compile_time_s": self.compile_time_s,
        }

    @property
    def digest(self) -> str:
        """The content digest of this description (see the module docstring)."""
        return artifact_digest(self.to_dict())


def artifact_digest(description: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of an artifact description (:meth:`Artifact.to_dict`).

    Canonical: keys sorted, ``(",", ":")`` separators, non-ASCII kept, UTF-8; floats as
    Python's shortest round-trip repr, so the same values give the same digest everywhere.
    """
    text = json.dumps(dict(description), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


_STR_FIELDS = ("name", "model", "version", "compiler_version", "precision", "target")
_INT_FIELDS = ("max_seq_len", "max_output_tokens", "slots")
_FLOAT_FIELDS = ("prefill_ms", "per_token_ms", "compile_time_s")
_KNOWN = frozenset(_STR_FIELDS + _INT_FIELDS + _FLOAT_FIELDS)


def parse_artifact(raw: Mapping[str, Any], source: str = "<artifact>") -> Artifact:
    """Validate a parsed TOML mapping (with an ``[artifact]`` table) into an Artifact.

    Every problem is collected and raised together in one ArtifactError.
    """
    errors: list[str] = []
    table = raw.get("artifact")
    if not isinstance(table, Mapping):
        raise ArtifactError(source, ["artifact: missing [artifact] table"])
    for key in sorted(set(table) - _KNOWN):
        errors.append(f"artifact.{key}: unknown key")
    values: dict[str, Any] = {}
    v: Any
    for key in _STR_FIELDS:
        v = table.get(key)
        if not isinstance(v, str) or not v.strip():
            errors.append(f"artifact.{key}: required non-empty string, got {v!r}")
        values[key] = v
    for key in _INT_FIELDS:
        v = table.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            errors.append(f"artifact.{key}: required integer >= 1, got {v!r}")
        values[key] = v
    for key in _FLOAT_FIELDS:
        v = table.get(key)
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or v < 0 or (key != "compile_time_s" and v == 0):
            bound = ">= 0" if key == "compile_time_s" else "> 0"
            errors.append(f"artifact.{key}: required finite number {bound}, got {v!r}")
        values[key] = v
    if not errors and values["max_output_tokens"] >= values["max_seq_len"]:
        errors.append(
            f"artifact.max_output_tokens: must be below max_seq_len ({values['max_seq_len']}),"
            f" got {values['max_output_tokens']}"
        )
    if errors:
        raise ArtifactError(source, errors)
    return Artifact(
        name=values["name"],
        model=values["model"],
        version=values["version"],
        compiler_version=values["compiler_version"],
        precision=values["precision"],
        target=values["target"],
        max_seq_len=values["max_seq_len"],
        max_output_tokens=values["max_output_tokens"],
        slots=values["slots"],
        prefill_s=float(values["prefill_ms"]) / 1e3,
        per_token_s=float(values["per_token_ms"]) / 1e3,
        compile_time_s=float(values["compile_time_s"]),
    )


def builtin_artifact_names() -> list[str]:
    """Names of the artifacts shipped in the package (``lpu_protocol/artifacts``)."""
    folder = resources.files("lpu_protocol") / "artifacts"
    names = (p.name for p in folder.iterdir())
    return sorted(n.removesuffix(".toml") for n in names if n.endswith(".toml"))


def builtin_artifact(name: str) -> Artifact:
    """Load a shipped artifact by name, e.g. ``llama-3.1-8b-2k``."""
    path = resources.files("lpu_protocol") / "artifacts" / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(builtin_artifact_names())
        raise ArtifactError(name, [f"no built-in artifact named {name!r} (known: {known})"])
    return parse_artifact(tomllib.loads(path.read_text("utf-8")), source=f"builtin:{name}")


def load_artifact(spec: str | Path) -> Artifact:
    """Load an artifact from a TOML file path, or a built-in by name."""
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        try:
            raw = tomllib.loads(path.read_text("utf-8"))
        except OSError as exc:
            raise ArtifactError(str(path), [f"cannot read: {exc}"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ArtifactError(str(path), [f"not valid TOML: {exc}"]) from exc
        return parse_artifact(raw, source=str(path))
    return builtin_artifact(str(spec))
