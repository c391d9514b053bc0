"""Router configuration: TOML -> defaults -> validation (every error, with its key path) -> frozen
dataclasses.

Nothing else in the router reads the config file or the environment; :func:`load_config` is the
edge. Every field is documented once, in ``router/example.toml`` and ``docs/router.md``
(meaning, unit, default, example). A short map of the schema::

    [server]     host, port, max_body_bytes, tokenizer, admin_api_key, max_retries, drain_s,
                 max_connections, idle_timeout_s, body_timeout_s, max_header_bytes,
                 max_body_memory_bytes, extra_params, extra_params_allow, workers
    [timeouts]   connect_s, read_s, keepalive_s
    [health]     path, interval_s, timeout_s, eject_after_failures, eject_for_s
    [admission]  mode, margin_s, margin, margin_quantile, margin_window, prediction,
                 learned_quantile, utilization_window_s, load_poll_interval_s, on_demand_max_wait_s,
                 schedule_from_answers, drift_tolerance, drift_min_samples
    [[buckets]]  name, model, backends, artifact, time_scale, max_seq_len, max_output_tokens,
                 slots, prefill_ms, per_token_ms, default_max_tokens, over_cap, ttft_slo_s,
                 e2e_slo_s, target_utilization, max_queue, max_concurrency, degraded_min_tokens,
                 spill, spill_share, upstream_model, extra_params, extra_params_allow
    [[tenants]]  name, api_keys, priority, requests_per_minute, tokens_per_minute
    [limits]     store, redis_url, on_store_error, timeout_ms, key_prefix, backoff_s

A bucket's shape (``max_seq_len``, ``max_output_tokens``, ``slots``, ``prefill_ms``,
``per_token_ms``) comes from its ``artifact`` (a built-in name or a TOML path, timings multiplied
by ``time_scale``) and any of those keys given explicitly override the artifact's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpu_protocol.param_policy import DEFAULT_PARAMS, ParamPolicy
from router.admission import Priority
from router.admission.settings import (
    DEFAULT_PRIORITY_RULES,
    DRIFT_WINDOW,
    AdmissionMode,
    AdmissionSettings,
    MarginPolicy,
    PredictionPolicy,
    PriorityRule,
    TenantPolicy,
)
from router.bucket_config import BucketConfig, OverCap, parse_bucket, parse_params
from router.config_fields import Fields
from router.limits.settings import LimitsConfig, parse_limits, scale_problems

log = logging.getLogger("lpu_router.config")

__all__ = [
    "MAX_WORKERS",
    "BucketConfig",
    "ConfigError",
    "HealthConfig",
    "OverCap",
    "RouterConfig",
    "ServerConfig",
    "TenantConfig",
    "TimeoutConfig",
    "key_digest",
    "limits_errors",
    "load_config",
    "parse_config",
    "workers_count",
]


MAX_WORKERS = 256
"""``server.workers`` at most."""


class ConfigError(ValueError):
    """The configuration is invalid; ``errors`` lists every problem as ``key.path: message``."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"{source}: invalid configuration:\n{lines}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    tokenizer: str | None = None
    admin_key_digest: bytes | None = None
    max_retries: int = 2
    # Lifecycle and server limits (docs/reliability.md).
    drain_s: float = 30.0
    max_connections: int = 1024
    idle_timeout_s: float = 15.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 8190
    params: ParamPolicy = DEFAULT_PARAMS
    """Request parameters beyond OpenAI's the router accepts (``extra_params``,
    ``extra_params_allow``); a bucket may override it."""
    max_body_memory_bytes: int = 128 * 1024 * 1024
    """Bytes of completion request bodies the router holds at once (reserved from
    ``Content-Length`` before a body is read, counted as a chunked one arrives); past it a
    request gets 503 ``body_memory_exhausted`` without its body being read."""
    large_body_bytes_per_s: int = 16 * 1024 * 1024
    """Bytes per second of large bodies (512 KiB or more) the router takes in
    (:mod:`router.body_rate`); past it 503 ``large_body_rate_exceeded`` with ``Retry-After``."""
    workers: int = 1
    """Worker processes serving the port (``"auto"`` in the file: the cores this process may
    run on); more than 1 runs the supervisor of :mod:`router.workers`."""


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    connect_s: float = 2.0
    read_s: float = 60.0
    keepalive_s: float = 4.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    path: str | None = None
    """The active check's path for backends without an LPU ``/load``; None: the first of
    ``/readyz``, ``/health``, ``/v1/models`` that is served (router/probe.py)."""
    interval_s: float = 1.0
    timeout_s: float = 1.0
    eject_after_failures: int = 3
    eject_for_s: float = 5.0


@dataclass(frozen=True, slots=True)
class TenantConfig:
    policy: TenantPolicy
    key_digests: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RouterConfig:
    server: ServerConfig
    timeouts: TimeoutConfig
    health: HealthConfig
    admission: AdmissionSettings
    buckets: tuple[BucketConfig, ...]
    tenants: tuple[TenantConfig, ...] = ()
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    @property
    def models(self) -> tuple[str, ...]:
        """Public model names, in first-seen order."""
        return tuple(dict.fromkeys(b.model for b in self.buckets))

    @property
    def auth_enabled(self) -> bool:
        return any(t.key_digests for t in self.tenants)


def key_digest(key: str) -> bytes:
    """SHA-256 of an API key: what the router keeps and compares (never the key itself)."""
    return hashlib.sha256(key.encode()).digest()


# The defaults are the dataclasses' fields: the parser reads them from these, never again.
_SERVER = ServerConfig()
_TIMEOUTS = TimeoutConfig()
_ADM = AdmissionSettings()
_HEALTH = HealthConfig()
_TENANT = TenantPolicy(name="")

_SECTIONS = frozenset({"server", "timeouts", "health", "admission", "buckets", "tenants",
                       "limits"})


def parse_config(raw: Mapping[str, Any], source: str = "<config>", *, base_dir: Path | None = None
                 ) -> RouterConfig:
    """Validate a parsed TOML mapping; raise :class:`ConfigError` listing every problem."""
    errors: list[str] = []
    for key in sorted(set(raw) - _SECTIONS):
        errors.append(f"{key}: unknown key")
    server = _server(Fields(raw, "server", errors), base_dir)
    timeouts = _timeouts(Fields(raw, "timeouts", errors))
    health = _health(Fields(raw, "health", errors))
    adm = Fields(raw, "admission", errors)
    buckets = _buckets(raw.get("buckets"), errors, base_dir, server.params)
    tenants = _tenants(raw.get("tenants"), errors)
    admission = AdmissionSettings(
        mode=AdmissionMode(adm.choice("mode", [m.value for m in AdmissionMode], _ADM.mode.value)),
        margin_s=adm.number("margin_s", _ADM.margin_s, lo=0.0),
        margin=MarginPolicy(adm.choice("margin", [m.value for m in MarginPolicy],
                                       _ADM.margin.value)),
        margin_quantile=adm.number("margin_quantile", _ADM.margin_quantile, lo=0.5, hi=1.0),
        margin_window=adm.integer("margin_window", _ADM.margin_window, lo=16),
        prediction=PredictionPolicy(
            adm.choice("prediction", [p.value for p in PredictionPolicy],
                       _ADM.prediction.value)
        ),
        learned_quantile=adm.number("learned_quantile", _ADM.learned_quantile, lo=0.5, hi=1.0),
        utilization_window_s=adm.number("utilization_window_s", _ADM.utilization_window_s, lo=0.1),
        load_poll_interval_s=adm.number("load_poll_interval_s", _ADM.load_poll_interval_s,
                                         lo=0.001),
        on_demand_max_wait_s=adm.number("on_demand_max_wait_s", _ADM.on_demand_max_wait_s, lo=0.0),
        schedule_from_answers=adm.boolean("schedule_from_answers", _ADM.schedule_from_answers),
        buckets=tuple(b.policy for b in buckets),
        tenants=tuple(t.policy for t in tenants),
        priorities=_priorities(adm, errors),
        min_retry_after_s=adm.number("min_retry_after_s", _ADM.min_retry_after_s, lo=0.0),
        learned_min_samples=adm.integer("learned_min_samples", _ADM.learned_min_samples, lo=1),
        drift_tolerance=adm.number("drift_tolerance", _ADM.drift_tolerance, lo=0.0),
        drift_min_samples=adm.integer("drift_min_samples", _ADM.drift_min_samples, lo=1,
                                      hi=DRIFT_WINDOW),
    )
    adm.finish()
    limits = parse_limits(Fields(raw, "limits", errors))
    errors.extend(limits_errors(limits, server.workers, admission))
    if errors:
        raise ConfigError(source, errors)
    return RouterConfig(server, timeouts, health, admission, tuple(buckets), tuple(tenants),
                        limits)


def limits_errors(limits: LimitsConfig, workers: int, admission: AdmissionSettings
                  ) -> list[str]:
    """What ``limits.store`` cannot do with ``workers`` processes (errors); what it does per
    worker only is logged as a warning. Checked again when ``--workers`` overrides the file."""
    errors, warnings = scale_problems(limits, workers, admission.tenants, admission.buckets)
    for w in warnings:
        log.warning("%s", w)
    return errors


def load_config(path: str | Path) -> RouterConfig:
    """Read and validate a TOML config file. Relative paths inside resolve from its folder."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read: {exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), [f"not valid TOML: {exc}"]) from exc
    return parse_config(raw, str(p), base_dir=p.parent)


def _resolve(path: str, base_dir: Path | None) -> str:
    p = Path(path)
    return str(base_dir / p) if base_dir is not None and not p.is_absolute() else path


def _server(f: Fields, base_dir: Path | None) -> ServerConfig:
    tokenizer = f.opt_str("tokenizer")
    if tokenizer is not None:
        tokenizer = _resolve(tokenizer, base_dir)
        if not Path(tokenizer).is_file():
            f.error("tokenizer", f"no such file: {tokenizer}")
    admin = f.opt_str("admin_api_key")
    cfg = ServerConfig(
        host=f.string("host", _SERVER.host),
        port=f.integer("port", _SERVER.port, lo=0, hi=65535),
        max_body_bytes=f.integer("max_body_bytes", _SERVER.max_body_bytes, lo=1024),
        tokenizer=tokenizer,
        admin_key_digest=key_digest(admin) if admin else None,
        max_retries=f.integer("max_retries", _SERVER.max_retries, lo=0, hi=10),
        drain_s=f.number("drain_s", _SERVER.drain_s, lo=0.0),
        max_connections=f.integer("max_connections", _SERVER.max_connections, lo=1),
        idle_timeout_s=f.number("idle_timeout_s", _SERVER.idle_timeout_s, lo=0.1),
        body_timeout_s=f.number("body_timeout_s", _SERVER.body_timeout_s, lo=0.1),
        max_header_bytes=f.integer("max_header_bytes", _SERVER.max_header_bytes, lo=1024,
                                   hi=1 << 20),
        max_body_memory_bytes=f.integer("max_body_memory_bytes",
                                        _SERVER.max_body_memory_bytes, lo=1024),
        params=parse_params(f, _SERVER.params),
        large_body_bytes_per_s=f.integer("large_body_bytes_per_s",
                                         _SERVER.large_body_bytes_per_s, lo=1024),
        workers=_workers(f),
    )
    if cfg.max_body_memory_bytes < cfg.max_body_bytes:
        f.error("max_body_memory_bytes", f"must be at least server.max_body_bytes"
                f" ({cfg.max_body_bytes}): a body of that size could never be read")
    f.finish()
    return cfg


def workers_count(value: object) -> int:
    """``server.workers`` / ``--workers``: an integer in [1, :data:`MAX_WORKERS`], or
    ``"auto"``: the cores this process may run on (``os.sched_getaffinity``). Raises ValueError
    saying what is wrong."""
    if value == "auto":
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return max(1, min(MAX_WORKERS, len(cores) if cores else os.cpu_count() or 1))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer or \"auto\", got {value!r}")
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be in [1, {MAX_WORKERS}] or \"auto\", got {value}")
    return value


def _workers(f: Fields) -> int:
    if not f.has("workers"):
        return _SERVER.workers
    try:
        return workers_count(f.raw("workers"))
    except ValueError as exc:
        f.error("workers", str(exc))
        return _SERVER.workers


def _timeouts(f: Fields) -> TimeoutConfig:
    cfg = TimeoutConfig(
        connect_s=f.number("connect_s", _TIMEOUTS.connect_s, lo=0.001),
        read_s=f.number("read_s", _TIMEOUTS.read_s, lo=0.001),
        keepalive_s=f.number("keepalive_s", _TIMEOUTS.keepalive_s, lo=0.0),
    )
    f.finish()
    return cfg


def _health(f: Fields) -> HealthConfig:
    path = f.opt_str("path")
    if path is not None and not path.startswith("/"):
        f.error("path", f"must start with '/', got {path!r}")
    cfg = HealthConfig(
        path=path,
        interval_s=f.number("interval_s", _HEALTH.interval_s, lo=0.01),
        timeout_s=f.number("timeout_s", _HEALTH.timeout_s, lo=0.001),
        eject_after_failures=f.integer("eject_after_failures", _HEALTH.eject_after_failures, lo=1),
        eject_for_s=f.number("eject_for_s", _HEALTH.eject_for_s, lo=0.0),
    )
    f.finish()
    return cfg


def _priorities(adm: Fields, errors: list[str]) -> tuple[PriorityRule, ...]:
    """``[admission.priorities.<class>]`` tables over :data:`DEFAULT_PRIORITY_RULES`."""
    from router.admission.priority import rule_errors

    if not adm.has("priorities"):
        return DEFAULT_PRIORITY_RULES
    raw = adm.raw("priorities")
    if not isinstance(raw, Mapping):
        adm.error("priorities", "must be a table of [admission.priorities.<class>] tables")
        return DEFAULT_PRIORITY_RULES
    rules: list[PriorityRule] = []
    for default in DEFAULT_PRIORITY_RULES:
        table = raw.get(default.priority.value, {})
        path = f"admission.priorities.{default.priority.value}"
        if not isinstance(table, Mapping):
            errors.append(f"{path}: must be a table")
            rules.append(default)
            continue
        f = Fields.of(table, path, errors)
        factor: float | None = default.utilization_factor
        if f.has("utilization_factor") and table["utilization_factor"] == "never":
            factor = None
        elif f.has("utilization_factor"):
            factor = f.opt_number("utilization_factor", lo=0.0, lo_open=True)
        rules.append(PriorityRule(default.priority,
                                  share=f.number("share", default.share, lo=0.0, hi=1.0,
                                                 lo_open=True),
                                  utilization_factor=factor))
        f.finish()
    for key in sorted(set(raw) - {p.priority.value for p in DEFAULT_PRIORITY_RULES}):
        errors.append(f"admission.priorities.{key}: unknown priority")
    errors.extend(f"admission.{e}" for e in rule_errors(rules))
    return tuple(rules)


def _table_list(raw: object, key: str, errors: list[str]) -> list[Mapping[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(t, Mapping) for t in raw):
        errors.append(f"{key}: must be an array of tables ([[{key}]])")
        return []
    return list(raw)


def _buckets(raw: object, errors: list[str], base_dir: Path | None,
             params: ParamPolicy) -> list[BucketConfig]:
    tables = _table_list(raw, "buckets", errors)
    if raw is None or (isinstance(raw, list) and not raw):
        errors.append("buckets: at least one [[buckets]] table is required")
    out: list[BucketConfig] = []
    for i, table in enumerate(tables):
        b = parse_bucket(Fields.of(table, f"buckets[{i}]", errors), base_dir, params)
        if b is not None:
            out.append(b)
    seen: dict[str, int] = {}
    for i, b in enumerate(out):
        if b.name in seen:
            errors.append(f"buckets[{i}].name: duplicate bucket name {b.name!r}")
        seen.setdefault(b.name, i)
    return out


def _tenants(raw: object, errors: list[str]) -> list[TenantConfig]:
    out: list[TenantConfig] = []
    digests: set[bytes] = set()
    for i, table in enumerate(_table_list(raw, "tenants", errors)):
        f = Fields.of(table, f"tenants[{i}]", errors)
        name = f.string("name", "")
        if not name:
            f.error("name", "required non-empty string")
        keys = f.str_list("api_keys")
        if not keys:
            f.error("api_keys", "required: at least one API key")
        own = tuple(key_digest(k) for k in keys)
        if digests & set(own):
            f.error("api_keys", "a key is already given to another tenant")
        digests |= set(own)
        priority = f.choice("priority", [p.value for p in Priority], _TENANT.priority.value)
        policy = TenantPolicy(
            name=name,
            priority=Priority(priority),
            requests_per_minute=f.opt_int("requests_per_minute", lo=1),
            tokens_per_minute=f.opt_int("tokens_per_minute", lo=1),
        )
        f.finish()
        out.append(TenantConfig(policy=policy, key_digests=own))
    return out
