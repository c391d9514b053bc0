"""``stable_version`` and ``[buckets.canary]``: defaults from the dataclass, every error with its
key path."""

from __future__ import annotations

from typing import Any

import pytest

from router.canary import CanaryConfig
from router.config import ConfigError, parse_config


def _raw(**bucket: Any) -> dict[str, Any]:
    b = {"name": "small", "model": "m", "artifact": "llama-3.1-8b-2k",
         "backends": ["http://127.0.0.1:9001"], **bucket}
    return {"buckets": [b]}


def test_canary_table_with_defaults() -> None:
    b = parse_config(_raw(stable_version="v1", canary={"version": "v2"})).buckets[0]
    assert b.stable_version == "v1"
    assert b.canary == CanaryConfig("v2")


def test_canary_table_every_key() -> None:
    table = {"version": "v2", "share": 0.2, "max_prediction_error_ms": 3.0,
             "max_error_rate": 0.01, "min_requests": 7, "error_quantile": 0.5}
    b = parse_config(_raw(canary=table)).buckets[0]
    assert b.canary == CanaryConfig("v2", 0.2, 3.0, 0.01, 7, 0.5)
    assert b.stable_version is None


def test_no_canary_by_default() -> None:
    b = parse_config(_raw()).buckets[0]
    assert (b.stable_version, b.canary) == (None, None)


def test_canary_errors_name_their_key_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(canary={"share": 1.0, "min_requests": 0, "typo": 1}))
    errors = info.value.errors
    for want in ("buckets[0].canary.version: required", "buckets[0].canary.share: must be below 1",
                 "buckets[0].canary.min_requests:", "buckets[0].canary.typo: unknown key"):
        assert any(e.startswith(want) for e in errors), (want, errors)


def test_canary_must_be_a_table() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_raw(canary="v2"))
    assert any(e.startswith("buckets[0].canary: must be a table") for e in info.value.errors)
