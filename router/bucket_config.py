"""The ``[[buckets]]`` schema: one compiled shape of one public model and its replicas.

A bucket's shape comes from its ``artifact`` (built-in name such as ``"llama-3.1-8b-2k"`` or a
TOML path; timings multiplied by ``time_scale``); explicit ``max_seq_len``,
``max_output_tokens``, ``slots``, ``prefill_ms`` and ``per_token_ms`` override the artifact's.
Without an artifact all five are required.

``spill`` (default true) lets the bucket's requests spill up to a larger bucket of the same
model when this one would refuse them for capacity; ``spill_share`` (default 0.5, in (0, 1]) is
the fraction of this bucket's slots that work spilled in from smaller buckets may hold
(:mod:`router.admission.spill`).

``stable_version`` names the artifact version the bucket's replicas serve; ``[buckets.canary]``
(``version``, ``share``, ``max_prediction_error_ms``, ``max_error_rate``, ``min_requests``,
``error_quantile``; :class:`router.canary.CanaryConfig`) sends ``share`` of the bucket's admitted
requests to replicas reporting ``version`` and rolls it back beyond the bounds
(:mod:`router.canary`).

``upstream_model`` is the name the bucket's backends know the model by (vLLM's served model
name); the router splices it into the forwarded body. ``extra_params`` and
``extra_params_allow`` override the ``[server]`` parameter policy for the bucket
(:func:`parse_params`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from lpu_protocol.artifact import Artifact, ArtifactError, load_artifact
from lpu_protocol.param_policy import DEFAULT_PARAMS, PARAM_PRESETS, ExtraParams, ParamPolicy
from router.admission.settings import BucketPolicy, ReplicaShape
from router.canary import CanaryConfig
from router.config_fields import Fields

__all__ = ["BucketConfig", "OverCap", "parse_bucket", "parse_params"]


class OverCap(StrEnum):
    """What to do with a ``max_tokens`` above a bucket's output cap."""

    CLAMP = "clamp"
    """Lower it to the cap and say so in the ``x-lpu-max-tokens-clamped-from`` header."""
    REFUSE = "refuse"
    """Refuse with 400 ``invalid_value`` on ``max_tokens``."""


@dataclass(frozen=True, slots=True)
class BucketConfig:
    """One compiled shape of one public model, served by a pool of replicas."""

    name: str
    model: str
    backends: tuple[str, ...]
    max_seq_len: int
    """Prompt plus output tokens the compiled shape holds."""
    max_output_tokens: int
    """Output cap: the largest allowance forwarded to this bucket."""
    default_max_tokens: int
    """Allowance assumed (and forwarded) when the client gives no ``max_tokens``."""
    policy: BucketPolicy
    over_cap: OverCap = OverCap.CLAMP
    """What a ``max_tokens`` above ``max_output_tokens`` gets."""
    upstream_model: str | None = None
    """The model name sent to the backends; None: the public ``model``."""
    params: ParamPolicy = DEFAULT_PARAMS
    """Parameters beyond OpenAI's this bucket accepts (the server's unless overridden)."""
    stable_version: str | None = None
    """The artifact version the bucket's replicas serve (informational until a canary)."""
    canary: CanaryConfig | None = None
    """``[buckets.canary]``: a canary version, its share and bounds; None: no canary."""


# The defaults are the dataclasses' fields: the parser reads them from these prototypes (every
# required field empty), never again.
_POLICY = BucketPolicy(name="", replicas=())
_BUCKET = BucketConfig("", "", (), 0, 0, 0, _POLICY)
_CANARY = CanaryConfig("")
_TIME_SCALE = 1.0
"""``time_scale`` when omitted: the artifact's own timings. No dataclass holds it (it is applied
to the artifact while parsing), so this is its one place."""


def _valid_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.path in ("", "/")


def parse_params(f: Fields, inherit: ParamPolicy) -> ParamPolicy:
    """``extra_params`` (refuse | pass | allow) and ``extra_params_allow`` (parameter names;
    ``"@vllm"`` stands for :data:`lpu_protocol.param_policy.VLLM_SAMPLING_PARAMS`) of a table; an
    absent key keeps ``inherit``'s value."""
    mode = ExtraParams(f.choice("extra_params", [m.value for m in ExtraParams],
                                inherit.mode.value))
    allow = inherit.allow
    if f.has("extra_params_allow"):
        names: set[str] = set()
        for name in f.str_list("extra_params_allow"):
            preset = PARAM_PRESETS.get(name)
            if preset is not None:
                names |= preset
            elif name.startswith("@"):
                f.error("extra_params_allow", f"unknown preset {name!r} (known:"
                        f" {', '.join(sorted(PARAM_PRESETS))})")
            else:
                names.add(name)
        allow = frozenset(names)
    return ParamPolicy(mode, allow)


def parse_canary(f: Fields) -> CanaryConfig | None:
    """Read ``[buckets.canary]``; None (errors recorded) when it is unusable."""
    version = f.string("version", "")
    if not version:
        f.error("version", "required non-empty string")
    share = f.number("share", _CANARY.share, lo=0.0, hi=1.0, lo_open=True)
    if share >= 1.0:
        f.error("share", f"must be below 1, got {share}")
    err_ms = f.number("max_prediction_error_ms", _CANARY.max_prediction_error_ms, lo=0.0)
    rate = f.number("max_error_rate", _CANARY.max_error_rate, lo=0.0, hi=1.0)
    min_requests = f.integer("min_requests", _CANARY.min_requests, lo=1)
    q = f.number("error_quantile", _CANARY.error_quantile, lo=0.0, hi=1.0, lo_open=True)
    slo = f.opt_number("min_slo_attainment", lo=0.0, hi=1.0)
    drift = f.opt_number("max_timing_drift", lo=0.0)
    f.finish()
    if not version or share >= 1.0:
        return None
    return CanaryConfig(version, share, err_ms, rate, min_requests, q, slo, drift)


def parse_bucket(f: Fields, base_dir: Path | None,
                 params: ParamPolicy = DEFAULT_PARAMS) -> BucketConfig | None:
    """Read one ``[[buckets]]`` table; return None (errors recorded) when it is unusable.
    ``params``: the server's parameter policy, which the table may override."""
    ok = True
    name = f.string("name", "")
    model = f.string("model", "")
    for key, value in (("name", name), ("model", model)):
        if not value:
            f.error(key, "required non-empty string")
            ok = False
    backends = [u.rstrip("/") for u in f.str_list("backends")]
    if not backends:
        f.error("backends", "required: at least one backend URL")
        ok = False
    for j, url in enumerate(backends):
        if not _valid_url(url):
            f.error(f"backends[{j}]", f"expected an http(s)://host:port URL, got {url!r}")
            ok = False
    if len(set(backends)) != len(backends):
        f.error("backends", "duplicate backend URL")
        ok = False

    artifact: Artifact | None = None
    spec = f.opt_str("artifact")
    time_scale = f.number("time_scale", _TIME_SCALE, lo=0.0, lo_open=True)
    if spec is not None:
        is_path = spec.endswith(".toml") or "/" in spec
        resolved = str(base_dir / spec) if is_path and base_dir and not Path(spec).is_absolute() \
            else spec
        try:
            artifact = load_artifact(resolved).scaled(time_scale)
        except ArtifactError as exc:
            f.error("artifact", "; ".join(exc.errors))
            ok = False
    max_seq_len = f.opt_int("max_seq_len", lo=2)
    cap = f.opt_int("max_output_tokens", lo=1)
    slots = f.opt_int("slots", lo=1)
    prefill_ms = f.opt_number("prefill_ms", lo=0.0, lo_open=True)
    per_token_ms = f.opt_number("per_token_ms", lo=0.0, lo_open=True)
    if artifact is not None:
        max_seq_len = max_seq_len or artifact.max_seq_len
        cap = cap or artifact.max_output_tokens
        slots = slots or artifact.slots
        prefill_ms = prefill_ms or artifact.prefill_s * 1e3
        per_token_ms = per_token_ms or artifact.per_token_s * 1e3
    shape = {"max_seq_len": max_seq_len, "max_output_tokens": cap, "slots": slots,
             "prefill_ms": prefill_ms, "per_token_ms": per_token_ms}
    for key, got in shape.items():
        if got is None and spec is None:
            f.error(key, "required when no artifact is given")
            ok = False
    if max_seq_len is not None and cap is not None and cap >= max_seq_len:
        f.error("max_output_tokens", f"must be below max_seq_len ({max_seq_len}), got {cap}")
        ok = False
    default_max = f.opt_int("default_max_tokens", lo=1)
    if default_max is not None and cap is not None and default_max > cap:
        f.error("default_max_tokens", f"must not exceed max_output_tokens ({cap}),"
                f" got {default_max}")
        ok = False
    over_cap = OverCap(f.choice("over_cap", [o.value for o in OverCap], _BUCKET.over_cap.value))
    ttft_slo_s = f.number("ttft_slo_s", _POLICY.ttft_slo_s, lo=0.0, lo_open=True)
    e2e_slo_s = f.opt_number("e2e_slo_s", lo=0.0, lo_open=True)
    target = f.number("target_utilization", _POLICY.target_utilization, lo=0.0, hi=1.0,
                      lo_open=True)
    max_queue = f.opt_int("max_queue", lo=0)
    max_concurrency = f.opt_int("max_concurrency", lo=1)
    degraded = f.opt_int("degraded_min_tokens", lo=1)
    spill = f.boolean("spill", _POLICY.spill)
    spill_share = f.number("spill_share", _POLICY.spill_share, lo=0.0, hi=1.0, lo_open=True)
    upstream_model = f.opt_str("upstream_model")
    bucket_params = parse_params(f, params)
    stable_version = f.opt_str("stable_version")
    canary: CanaryConfig | None = None
    if f.has("canary"):
        canary = parse_canary(f.sub("canary"))
        ok = ok and canary is not None
    f.finish()
    if not ok or None in shape.values():
        return None
    assert max_seq_len is not None and cap is not None and slots is not None
    assert prefill_ms is not None and per_token_ms is not None
    urls = tuple(backends)
    replicas = tuple(
        ReplicaShape(url, slots, prefill_ms / 1e3, per_token_ms / 1e3) for url in urls
    )
    return BucketConfig(
        name=name,
        model=model,
        backends=urls,
        max_seq_len=max_seq_len,
        max_output_tokens=cap,
        default_max_tokens=default_max or cap,
        over_cap=over_cap,
        policy=BucketPolicy(
            name=name,
            replicas=replicas,
            ttft_slo_s=ttft_slo_s,
            e2e_slo_s=e2e_slo_s,
            target_utilization=target,
            max_queue=max_queue,
            max_concurrency=max_concurrency,
            degraded_min_tokens=degraded,
            model=model,
            max_seq_len=max_seq_len,
            max_output_tokens=cap,
            spill=spill,
            spill_share=spill_share,
        ),
        upstream_model=upstream_model,
        params=bucket_params,
        stable_version=stable_version,
        canary=canary,
    )
