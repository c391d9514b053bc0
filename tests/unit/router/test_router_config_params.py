"""The parameter policy and the upstream model name in the config: defaults, inheritance from
``[server]`` to ``[[buckets]]``, presets, and errors with their key paths."""

from __future__ import annotations

from typing import Any

import pytest

from lpu_protocol.param_policy import DEFAULT_PARAMS, VLLM_SAMPLING_PARAMS, ExtraParams, ParamPolicy
from router.config import ConfigError, parse_config


def _config(server: dict[str, Any] | None = None, *buckets: dict[str, Any]) -> dict[str, Any]:
    tables = [{"name": f"b{i}", "model": "m", "artifact": "llama-3.1-8b-2k",
               "backends": [f"http://127.0.0.1:{9001 + i}"], **b}
              for i, b in enumerate(buckets or ({},))]
    return {"server": server or {}, "buckets": tables}


def test_defaults_allow_vllm_sampling_parameters_and_keep_the_public_name() -> None:
    cfg = parse_config(_config())
    assert cfg.server.params == DEFAULT_PARAMS == ParamPolicy(ExtraParams.ALLOW,
                                                              VLLM_SAMPLING_PARAMS)
    b = cfg.buckets[0]
    assert b.params == DEFAULT_PARAMS
    assert b.upstream_model is None


def test_buckets_inherit_the_server_policy_and_may_override_it() -> None:
    cfg = parse_config(_config(
        {"extra_params": "allow", "extra_params_allow": ["@vllm", "chat_template_kwargs"]},
        {},
        {"extra_params": "refuse"},
        {"extra_params_allow": ["top_k"], "upstream_model": "meta-llama/Llama-3.1-8B-Instruct"},
        {"extra_params": "pass"},
    ))
    server = ParamPolicy(ExtraParams.ALLOW, VLLM_SAMPLING_PARAMS | {"chat_template_kwargs"})
    assert cfg.server.params == server
    inherit, refuse, listed, passing = cfg.buckets
    assert inherit.params == server
    assert refuse.params.mode is ExtraParams.REFUSE
    assert listed.params == ParamPolicy(ExtraParams.ALLOW, frozenset({"top_k"}))
    assert listed.upstream_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert passing.params.mode is ExtraParams.PASS


def test_bad_values_are_reported_with_their_key_paths() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config({"extra_params": "sometimes", "extra_params_allow": "top_k"},
                             {"extra_params_allow": ["@sglang"], "upstream_model": ""}))
    errors = "\n".join(info.value.errors)
    assert "server.extra_params: expected one of refuse, pass, allow" in errors
    assert "server.extra_params_allow: expected an array" in errors
    assert "buckets[0].extra_params_allow: unknown preset '@sglang'" in errors
    assert "buckets[0].upstream_model: expected a non-empty string" in errors
