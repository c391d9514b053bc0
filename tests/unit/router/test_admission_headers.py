"""The headers of admission decisions: durations written like OpenAI's, refusal and admission
headers."""

from __future__ import annotations

import pytest

from router.admission import RateLimitState
from router.admission_headers import (
    admitted_headers,
    format_reset,
    ratelimit_headers,
    refusal_headers,
)
from router.outcomes import RejectReason


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0s"), (-1.0, "0s"), (0.0004, "1ms"), (0.02, "20ms"), (0.999, "999ms"), (1.0, "1s"),
    (1.5, "1.5s"), (59.9511, "59.952s"), (60.0, "1m0s"), (360.0, "6m0s"), (61.25, "1m1.25s"),
    (3723.0, "1h2m3s"),
], ids=["zero", "negative", "sub-ms", "20ms", "999ms", "1s", "1.5s", "ms-precision",
        "1m", "6m", "1m1.25s", "1h2m3s"])
def test_format_reset(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_ratelimit_headers_only_for_the_limits_a_tenant_has() -> None:
    assert ratelimit_headers(None) == {}
    only_requests = RateLimitState(limit_requests=60, remaining_requests=59, reset_requests_s=1.0)
    assert ratelimit_headers(only_requests) == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
    }
    both = RateLimitState(60, 0, 60.0, 1000, 250, 45.0)
    assert ratelimit_headers(both) == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "250", "x-ratelimit-reset-tokens": "45s",
    }


@pytest.mark.parametrize(("retry", "expected"), [
    (0.05, {"Retry-After": "1", "retry-after-ms": "50"}),
    (2.0001, {"Retry-After": "3", "retry-after-ms": "2001"}),
    (None, {}),
], ids=["short", "ceil", "hopeless"])
def test_refusal_headers(retry: float | None, expected: dict[str, str]) -> None:
    h = refusal_headers(RejectReason.SLO_TTFT, retry, predicted_wait_s=0.4,
                        predicted_ttft_s=0.48)
    assert h == expected | {"x-lpu-reject-reason": "slo_ttft", "x-lpu-predicted-wait-ms": "400.0",
                            "x-lpu-predicted-ttft-ms": "480.0"}
    assert "x-lpu-predicted-ttft-ms" not in refusal_headers(RejectReason.TENANT_RPM, 1.0)


def test_admitted_headers() -> None:
    assert admitted_headers(0.1234) == {"x-lpu-predicted-ttft-ms": "123.4"}
    assert admitted_headers(0.05, clamped="degraded", clamped_from=512) == {
        "x-lpu-predicted-ttft-ms": "50.0", "x-lpu-max-tokens-clamped": "degraded",
        "x-lpu-max-tokens-clamped-from": "512",
    }
