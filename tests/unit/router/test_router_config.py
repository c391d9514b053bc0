"""Config validation: every error at once with its key path; the CLI's check exit codes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from lpu_protocol.artifact import load_artifact
from router.__main__ import main
from router.admission import Priority
from router.admission.settings import (
    DEFAULT_PRIORITY_RULES,
    AdmissionMode,
    AdmissionSettings,
    BucketPolicy,
    TenantPolicy,
)
from router.config import (
    BucketConfig,
    ConfigError,
    HealthConfig,
    ServerConfig,
    TimeoutConfig,
    key_digest,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[3]


def _minimal(**bucket: Any) -> dict[str, Any]:
    b = {"name": "short", "model": "m", "artifact": "llama-3.1-8b-2k",
         "backends": ["http://127.0.0.1:9001"]}
    b.update(bucket)
    return {"buckets": [b]}


def test_minimal_config_takes_shape_from_the_artifact() -> None:
    cfg = parse_config(_minimal(time_scale=0.5))
    b = cfg.buckets[0]
    assert (b.max_seq_len, b.max_output_tokens, b.default_max_tokens) == (2048, 1024, 1024)
    replica = b.policy.replicas[0]
    assert replica.slots == 8
    assert replica.prefill_s == pytest.approx(0.040)
    assert replica.per_token_s == pytest.approx(0.000893)
    assert cfg.admission.mode is AdmissionMode.TIMELINE
    assert cfg.models == ("m",)
    assert not cfg.auth_enabled


def test_explicit_shape_overrides_the_artifact() -> None:
    cfg = parse_config(_minimal(max_output_tokens=256, slots=2, prefill_ms=10.0))
    b = cfg.buckets[0]
    assert (b.max_output_tokens, b.policy.replicas[0].slots) == (256, 2)
    assert b.policy.replicas[0].prefill_s == pytest.approx(0.010)


def test_every_error_is_reported_at_once_with_its_key_path() -> None:
    raw = {
        "server": {"port": 70000, "max_retries": "two", "tokenizer": "/nonexistent/t.json"},
        "timeouts": {"read_s": -1},
        "health": {"path": "readyz", "typo": 1},
        "admission": {"mode": "fast", "priorities": {"batch": {"share": 2.0}, "vip": {}}},
        "buckets": [
            {"name": "a", "model": "m", "backends": ["ftp://x"], "max_seq_len": 100,
             "max_output_tokens": 200, "slots": 1, "prefill_ms": 1.0, "per_token_ms": 1.0},
            {"name": "a", "model": "", "artifact": "no-such-artifact", "backends": [],
             "over_cap": "maybe", "ttft_slo_ms": 100},
        ],
        "tenants": [{"name": "t", "api_keys": []}],
        "extra": 1,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "cfg.toml")
    errors = info.value.errors
    expected = [
        "extra: unknown key",
        "server.port:",
        "server.max_retries:",
        "server.tokenizer: no such file",
        "timeouts.read_s:",
        "health.path:",
        "health.typo: unknown key",
        "admission.mode:",
        "admission.priorities.batch.share:",
        "admission.priorities.vip: unknown priority",
        "buckets[0].backends[0]:",
        "buckets[0].max_output_tokens: must be below max_seq_len",
        "buckets[1].model: required",
        "buckets[1].backends: required",
        "buckets[1].artifact:",
        "buckets[1].over_cap:",
        "buckets[1].ttft_slo_ms: unknown key",
        "tenants[0].api_keys: required",
    ]
    for prefix in expected:
        assert any(e.startswith(prefix) for e in errors), (prefix, errors)
    assert "cfg.toml" in str(info.value)


def test_no_buckets_is_an_error() -> None:
    with pytest.raises(ConfigError, match="buckets: at least one"):
        parse_config({})


def test_duplicate_bucket_names_and_shared_keys_are_errors() -> None:
    raw = _minimal()
    raw["buckets"].append(dict(raw["buckets"][0]))
    raw["tenants"] = [{"name": "a", "api_keys": ["k"]}, {"name": "b", "api_keys": ["k"]}]
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert any(e.startswith("buckets[1].name: duplicate") for e in info.value.errors)
    assert any(e.startswith("tenants[1].api_keys: a key is already") for e in info.value.errors)


def test_tenants_keep_digests_not_keys() -> None:
    raw = _minimal()
    raw["tenants"] = [{"name": "acme", "api_keys": ["sk-1"], "priority": "interactive",
                       "requests_per_minute": 60}]
    raw["server"] = {"admin_api_key": "adm"}
    cfg = parse_config(raw)
    t = cfg.tenants[0]
    assert t.key_digests == (key_digest("sk-1"),)
    assert t.policy.priority is Priority.INTERACTIVE
    assert t.policy.requests_per_minute == 60
    assert cfg.server.admin_key_digest == key_digest("adm")
    assert cfg.auth_enabled
    assert "sk-1" not in repr(cfg)


def test_priorities_override_defaults() -> None:
    raw = _minimal()
    raw["admission"] = {"priorities": {"interactive": {"utilization_factor": "never"},
                                       "batch": {"share": 0.25}}}
    rules = {r.priority: r for r in parse_config(raw).admission.priorities}
    assert rules[Priority.INTERACTIVE].utilization_factor is None
    assert rules[Priority.BATCH].share == 0.25


def test_example_config_is_valid() -> None:
    cfg = load_config(REPO / "router" / "example.toml")
    assert [b.name for b in cfg.buckets] == ["short", "medium", "long"]


@pytest.mark.parametrize(
    ("body", "code"),
    [("[[buckets]]\nname='x'\nmodel='m'\nartifact='llama-3.1-8b-2k'\n"
      "backends=['http://127.0.0.1:1']\n", 0),
     ("[[buckets]]\nname=''\n", 1),
     ("not toml [", 1)],
    ids=["valid", "invalid", "not-toml"],
)
def test_check_exit_codes(tmp_path: Path, body: str, code: int,
                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    assert main(["--check", str(path)]) == code
    assert main(["check", str(path)]) == code
    if code:
        assert str(path) in capsys.readouterr().err


def test_check_runs_as_a_module(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = -1\n")
    proc = subprocess.run([sys.executable, "-m", "router", "--check", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "server.port:" in proc.stderr and "buckets: at least one" in proc.stderr


def _defaults(cls: type[Any]) -> dict[str, Any]:
    """The fields of dataclass ``cls`` that have a default, with it."""
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def _values(obj: Any, names: Iterable[str]) -> dict[str, Any]:
    return {n: getattr(obj, n) for n in names}


def test_omitted_keys_take_the_dataclass_defaults() -> None:
    """The dataclass field is the one place a default is written: a config that gives no
    [server], [timeouts], [health] or [admission] key, a [[buckets]] table with only its
    required keys and a [[tenants]] table with only its own, gets exactly those."""
    raw = _minimal()
    raw["tenants"] = [{"name": "acme", "api_keys": ["sk-1"]}]
    cfg = parse_config(raw)
    assert cfg.server == ServerConfig()
    assert cfg.timeouts == TimeoutConfig()
    assert cfg.health == HealthConfig()
    assert dataclasses.replace(cfg.admission, buckets=(), tenants=()) == AdmissionSettings()
    bucket = cfg.buckets[0]
    assert _values(bucket, _defaults(BucketConfig)) == _defaults(BucketConfig)
    # The model and the shape are the table's own (required or from its artifact).
    policy = {k: v for k, v in _defaults(BucketPolicy).items()
              if k not in ("model", "max_seq_len", "max_output_tokens")}
    assert _values(bucket.policy, policy) == policy
    tenant = _defaults(TenantPolicy)
    assert _values(cfg.tenants[0].policy, tenant) == tenant
    # time_scale omitted: the artifact's own timings, unscaled.
    art = load_artifact("llama-3.1-8b-2k")
    replica = bucket.policy.replicas[0]
    assert (replica.prefill_s, replica.per_token_s) == (art.prefill_s, art.per_token_s)
    # The allowance a request without max_tokens gets: the output cap.
    assert bucket.default_max_tokens == bucket.max_output_tokens


def test_omitted_priority_keys_keep_the_default_rule() -> None:
    """An [admission.priorities.<class>] table that gives one key keeps the class's default
    rule for the others."""
    raw = _minimal()
    raw["admission"] = {"priorities": {"batch": {"share": 0.25}, "standard": {}}}
    rules = {r.priority: r for r in parse_config(raw).admission.priorities}
    defaults = {r.priority: r for r in DEFAULT_PRIORITY_RULES}
    assert rules[Priority.BATCH] == dataclasses.replace(defaults[Priority.BATCH], share=0.25)
    assert rules[Priority.STANDARD] == defaults[Priority.STANDARD]
    assert rules[Priority.INTERACTIVE] == defaults[Priority.INTERACTIVE]


@pytest.mark.parametrize(("value", "expected"), [(None, True), (True, True), (False, False)],
                         ids=["default", "true", "false"])
def test_schedule_from_answers_is_a_boolean(value: bool | None, expected: bool) -> None:
    raw = _minimal()
    if value is not None:
        raw["admission"] = {"schedule_from_answers": value}
    assert parse_config(raw).admission.schedule_from_answers is expected


def test_schedule_from_answers_refuses_anything_but_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"admission.schedule_from_answers: expected true or"):
        parse_config(_minimal() | {"admission": {"schedule_from_answers": "yes"}})
