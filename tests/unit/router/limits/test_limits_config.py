"""The ``[limits]`` table: defaults, every error with its key path, and what counting in memory
cannot do with several workers."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from router.config import ConfigError, limits_errors, parse_config
from router.limits.settings import LimitsConfig, OnStoreError, StoreKind


def _raw(limits: dict[str, Any] | None = None, *, workers: int = 1, rpm: int | None = None,
         max_queue: int | None = None) -> dict[str, Any]:
    bucket: dict[str, Any] = {"name": "short", "model": "m", "artifact": "llama-3.1-8b-2k",
                              "backends": ["http://127.0.0.1:9"]}
    if max_queue is not None:
        bucket["max_queue"] = max_queue
    raw: dict[str, Any] = {"server": {"workers": workers}, "buckets": [bucket]}
    if rpm is not None:
        raw["tenants"] = [{"name": "acme", "api_keys": ["k"], "requests_per_minute": rpm}]
    if limits is not None:
        raw["limits"] = limits
    return raw


def test_the_default_is_memory_with_no_dependency() -> None:
    cfg = parse_config(_raw())
    assert cfg.limits == LimitsConfig()
    assert (cfg.limits.store, cfg.limits.on_store_error) == (StoreKind.MEMORY, OnStoreError.OPEN)
    assert cfg.limits.timeout_s == pytest.approx(0.025)


def test_a_redis_store_with_every_field() -> None:
    cfg = parse_config(_raw({"store": "redis", "redis_url": "redis://10.0.0.5:6379/2",
                             "on_store_error": "closed", "timeout_ms": 10, "key_prefix": "a:",
                             "backoff_s": 2.5}, workers=2, rpm=60))
    assert cfg.limits == LimitsConfig(StoreKind.REDIS, "redis://10.0.0.5:6379/2",
                                      OnStoreError.CLOSED, 10.0, "a:", 2.5)


def test_every_error_at_once_with_its_key_path() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_raw({"store": "redis", "on_store_error": "maybe", "timeout_ms": 0,
                           "key_prefix": "", "backof_s": 1}))
    assert e.value.errors == [
        'limits.redis_url: required with store = "redis" (e.g. "redis://127.0.0.1:6379/0")',
        "limits.key_prefix: must not be empty",
        "limits.on_store_error: expected one of open, closed, got 'maybe'",
        "limits.timeout_ms: must be in [1, 10000], got 0",
        "limits.backof_s: unknown key",
    ]
    with pytest.raises(ConfigError) as e:
        parse_config(_raw({"store": "redis", "redis_url": "http://redis:6379"}))
    assert e.value.errors == ["limits.redis_url: expected a URL starting with redis://,"
                              " rediss://, unix://, got 'http://redis:6379'"]


def test_tenant_limits_in_memory_with_several_workers_are_an_error() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_raw(workers=2, rpm=60))
    [error] = e.value.errors
    assert error.startswith("limits.store: tenant 'acme' has a per-minute limit and"
                            " server.workers is 2")
    assert 'use store = "redis"' in error
    assert parse_config(_raw(workers=1, rpm=60)).limits.store is StoreKind.MEMORY
    # The same check for --workers, which overrides the file after it was parsed.
    cfg = parse_config(_raw(rpm=60))
    assert limits_errors(cfg.limits, 3, cfg.admission) != []
    assert limits_errors(LimitsConfig(StoreKind.REDIS, "redis://x"), 3, cfg.admission) == []


def test_bucket_caps_in_memory_with_several_workers_are_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lpu_router.config"):
        parse_config(_raw(workers=2, max_queue=8))
    [record] = caplog.records
    assert "buckets.short: max_queue / max_concurrency hold per worker" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lpu_router.config"):
        parse_config(_raw({"store": "redis", "redis_url": "redis://x"}, workers=2, max_queue=8))
    assert caplog.records == []
