"""The spill rule (router.admission.spill) on a virtual clock with the real TimelineAdmitter:
each case a reason, and the property that spill never takes a bucket's own goodput below its
configured share."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.admission import AdmissionRequest, Admitted, Decision, Priority, Refused
from router.admission.controller import TimelineAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape, TenantPolicy
from router.admission.spill import Skip, SpillPair, consider, soonest, spill_targets
from router.attempts import padding_tokens
from router.config import ConfigError, parse_config
from router.outcomes import Outcome, RejectReason


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# short: 1 slot, 11 tokens hold it 0.08 + 10 * 0.01 = 0.18 s, SLO 0.32 s (4x its prefill).
# medium: 2 slots, prefill 0.19 s (inside the short SLO when its queue is empty), SLO 0.76 s.
# long: prefill 0.6 s, beyond the short SLO whatever its queue.
SHORT = BucketPolicy("short", (ReplicaShape("http://s0", 1, 0.08, 0.01),), ttft_slo_s=0.32,
                     model="m", max_seq_len=2048, max_output_tokens=512)
MEDIUM = BucketPolicy("medium", (ReplicaShape("http://m0", 2, 0.19, 0.012),), ttft_slo_s=0.76,
                      model="m", max_seq_len=8192, max_output_tokens=1024)
LONG = BucketPolicy("long", (ReplicaShape("http://l0", 1, 0.6, 0.02),), ttft_slo_s=2.4,
                    model="m", max_seq_len=32768, max_output_tokens=2048)
OTHER = dataclasses.replace(MEDIUM, name="other", model="x",
                            replicas=(ReplicaShape("http://o0", 2, 0.19, 0.012),))


def _admitter(*buckets: BucketPolicy, **kw: object) -> tuple[TimelineAdmitter, Clock]:
    clock = Clock()
    s = AdmissionSettings(buckets=buckets, margin_s=0.0, utilization_window_s=1.0,
                          **kw)  # type: ignore[arg-type]
    return TimelineAdmitter(s, clock=clock), clock


def _req(bucket: str = "short", max_tokens: int = 11, **kw: object) -> AdmissionRequest:
    return AdmissionRequest(bucket, prompt_tokens=100, max_tokens=max_tokens,
                            **kw)  # type: ignore[arg-type]


def _fill_short(a: TimelineAdmitter) -> None:
    """Two requests: the short slot busy until 0.36 s; a third waits 0.36 + 0.08 > 0.32."""
    assert all(a.decide(_req()).admitted for _ in range(2))


def _fill_medium(a: TimelineAdmitter, tokens: int = 1) -> None:
    """Both medium slots busy for 0.19 s + (tokens - 1) * 0.012 s with medium's own work."""
    assert all(a.decide(_req("medium", tokens)).admitted for _ in range(2))


# --- The pure checks, one reason each -------------------------------------------------------

PAIR = SpillPair.of(SHORT, MEDIUM)


@pytest.mark.parametrize(("pair", "need", "tokens", "util", "spilled", "want"), [
    (PAIR, 100, 11, 0.0, 0, None),
    (SpillPair.of(dataclasses.replace(SHORT, spill=False), MEDIUM), 100, 11, 0.0, 0,
     Skip.SPILL_OFF),
    (SpillPair.of(SHORT, OTHER), 100, 11, 0.0, 0, Skip.OTHER_MODEL),
    (PAIR, 100, 1025, 0.0, 0, Skip.DOES_NOT_FIT),  # over medium's output cap
    (PAIR, 8000, 193, 0.0, 0, Skip.DOES_NOT_FIT),  # 8193 tokens of shape
    (PAIR, 8000, 192, 0.0, 0, None),  # exactly the shape
    (PAIR, 100, 11, 0.85, 0, Skip.OVER_TARGET),  # at the target: no headroom
    (PAIR, 100, 11, 0.849, 0, None),
    (PAIR, 100, 11, 0.0, 1, Skip.SHARE_FULL),  # 0.5 of 2 slots: 1 spilled request at most
], ids=["takes", "spill_off", "other_model", "over_output_cap", "over_shape", "exact_fit",
        "at_target", "under_target", "share_full"])
def test_consider(pair: SpillPair, need: int, tokens: int, util: float, spilled: int,
                  want: Skip | None) -> None:
    assert consider(pair, need, tokens, util, spilled) is want


def test_candidates_are_the_larger_shapes_of_the_model_smallest_first() -> None:
    buckets = (LONG, OTHER, MEDIUM, SHORT)
    assert [p.target.name for p in spill_targets(SHORT, buckets)] == ["medium", "long"]
    assert [p.target.name for p in spill_targets(MEDIUM, buckets)] == ["long"]
    assert spill_targets(LONG, buckets) == ()
    assert spill_targets(dataclasses.replace(SHORT, spill=False), buckets) == ()
    # Judged with the request's SLO, the target's caps and name.
    pair = spill_targets(SHORT, buckets)[0]
    assert (pair.policy.name, pair.policy.ttft_slo_s, pair.spill_cap) == ("medium", 0.32, 1)


@pytest.mark.parametrize(("a", "b", "want"), [(None, None, None), (None, 0.2, 0.2),
                                              (0.3, None, 0.3), (0.3, 0.2, 0.2), (0.1, 0.2, 0.1)])
def test_soonest(a: float | None, b: float | None, want: float | None) -> None:
    assert soonest(a, b) == want


# --- The controller on a virtual clock, one reason each --------------------------------------

def _spilled() -> tuple[Decision, str]:
    a, _ = _admitter(SHORT, MEDIUM, LONG)
    _fill_short(a)
    return a.decide(_req()), "medium"


def _over_target() -> tuple[Decision, str]:
    a, clock = _admitter(SHORT, dataclasses.replace(MEDIUM, target_utilization=0.25))
    _fill_medium(a, tokens=11)  # 0.31 s each: busy 0.6 of 2 slot-seconds by 0.3 s
    clock.t = 0.3
    _fill_short(a)
    return a.decide(_req()), "refused"


def _misses_slo() -> tuple[Decision, str]:
    a, _ = _admitter(SHORT, MEDIUM, LONG)
    _fill_medium(a)  # a spilled request would wait 0.19 s: 0.38 s > 0.32 s
    _fill_short(a)
    return a.decide(_req()), "refused"


def _spill_off() -> tuple[Decision, str]:
    a, _ = _admitter(dataclasses.replace(SHORT, spill=False), MEDIUM)
    _fill_short(a)
    return a.decide(_req()), "refused"


def _other_model() -> tuple[Decision, str]:
    a, _ = _admitter(SHORT, OTHER)
    _fill_short(a)
    return a.decide(_req()), "refused"


def _does_not_fit() -> tuple[Decision, str]:
    a, _ = _admitter(SHORT, dataclasses.replace(MEDIUM, max_output_tokens=8))
    _fill_short(a)
    return a.decide(_req()), "refused"


def _share_full() -> tuple[Decision, str]:
    a, _ = _admitter(SHORT, MEDIUM)
    _fill_short(a)
    assert isinstance(a.decide(_req()), Admitted)  # the one spilled slot of medium's two
    return a.decide(_req()), "refused"


def _next_candidate() -> tuple[Decision, str]:
    """Medium's spill share full, long's prefill beyond the SLO, a third shape takes it."""
    xl = dataclasses.replace(LONG, name="xl", replicas=(ReplicaShape("http://x0", 1, 0.2, 0.02),),
                             spill_share=1.0)  # 0.5 of its 1 slot would be none
    a, _ = _admitter(SHORT, MEDIUM, dataclasses.replace(LONG, max_seq_len=16384), xl)
    _fill_short(a)
    assert a.decide(_req()).admitted
    return a.decide(_req()), "xl"


def _batch_never_fits() -> tuple[Decision, str]:
    """A batch request may use half the SLO: 0.16 s, under medium's 0.19 s prefill."""
    a, _ = _admitter(SHORT, MEDIUM)
    _fill_short(a)
    return a.decide(_req(priority=Priority.BATCH)), "refused"


def _interactive_spills() -> tuple[Decision, str]:
    a, _ = _admitter(SHORT, MEDIUM)
    _fill_short(a)
    return a.decide(_req(priority=Priority.INTERACTIVE)), "medium"


def _interactive_over_target() -> tuple[Decision, str]:
    """Interactive ignores the guard in its own bucket, never in one it spills into."""
    a, clock = _admitter(SHORT, dataclasses.replace(MEDIUM, target_utilization=0.25))
    _fill_medium(a, tokens=11)
    clock.t = 0.3
    _fill_short(a)
    return a.decide(_req(priority=Priority.INTERACTIVE)), "refused"


def _tenant_over() -> tuple[Decision, str]:
    """A tenant limit is not capacity: nothing spills."""
    a, _ = _admitter(SHORT, MEDIUM, tenants=(TenantPolicy("acme", requests_per_minute=1),))
    assert a.decide(_req(tenant="acme")).admitted
    return a.decide(_req(tenant="acme")), "refused"


CASES: dict[str, Callable[[], tuple[Decision, str]]] = {
    "spilled": _spilled, "over_target": _over_target, "misses_the_request_slo": _misses_slo,
    "spill_off": _spill_off, "other_model": _other_model, "does_not_fit": _does_not_fit,
    "share_full": _share_full, "next_candidate": _next_candidate,
    "batch_half_slo": _batch_never_fits, "interactive_spills": _interactive_spills,
    "interactive_over_target": _interactive_over_target, "tenant_limit": _tenant_over,
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_spill_case(case: Callable[[], tuple[Decision, str]]) -> None:
    d, want = case()
    if want == "refused":
        assert isinstance(d, Refused)
        return
    assert isinstance(d, Admitted)
    assert (d.bucket, d.spilled_from) == (want, "short")
    assert d.terms.deadline_s == pytest.approx(0.32)  # the request's SLO, not the target's


def test_own_admission_names_its_bucket() -> None:
    a, _ = _admitter(SHORT, MEDIUM)
    d = a.decide(_req())
    assert isinstance(d, Admitted) and (d.bucket, d.spilled_from) == ("short", None)


def test_spilled_prediction_is_the_target_schedule() -> None:
    d, _ = _spilled()
    assert isinstance(d, Admitted)
    assert (d.backend, d.predicted_wait_s, d.terms.predicted_ttft_s) == ("http://m0", 0.0, 0.19)


def test_refusal_reason_is_the_origins() -> None:
    d, _ = _misses_slo()
    assert isinstance(d, Refused) and d.reason is RejectReason.SLO_TTFT
    d, _ = _share_full()
    assert isinstance(d, Refused) and d.reason is RejectReason.SLO_TTFT
    d, _ = _tenant_over()
    assert isinstance(d, Refused) and d.reason is RejectReason.TENANT_RPM


@pytest.mark.parametrize(("case", "retry"), [
    # Short frees its slot in 0.36 - (0.32 - 0.08) = 0.12 s; medium in 0.19 + 0.19 - 0.32.
    (_misses_slo, 0.06),
    (_spill_off, 0.12),
    # Long's prefill alone is past the SLO (no time), medium is over its spill share (none).
    (_share_full, 0.12),
], ids=["soonest_is_a_candidate", "origin_only", "skipped_give_no_time"])
def test_retry_after_is_the_soonest_over_candidates(
        case: Callable[[], tuple[Decision, str]], retry: float) -> None:
    d, _ = case()
    assert isinstance(d, Refused) and d.retry_after_s == pytest.approx(retry)
    assert d.message.endswith(f"retry in {retry:.3f} s" if retry == 0.12
                              else f"retry in {retry:.3f} s (in bucket 'medium')"), d.message


@pytest.mark.parametrize(("keys", "error"), [
    ({}, None),
    ({"spill": False, "spill_share": 1.0}, None),
    ({"spill_share": 0.0}, "buckets[0].spill_share"),
    ({"spill_share": 1.5}, "buckets[0].spill_share"),
    ({"spill": "yes"}, "buckets[0].spill"),
], ids=["defaults", "given", "share_zero", "share_over_one", "spill_not_bool"])
def test_config_keys(keys: dict[str, object], error: str | None) -> None:
    raw = {"buckets": [{"name": "short", "model": "m", "artifact": "llama-3.1-8b-2k",
                        "backends": ["http://127.0.0.1:1"], **keys}]}
    if error is not None:
        with pytest.raises(ConfigError, match=re.escape(error)):
            parse_config(raw)
        return
    p = parse_config(raw).buckets[0].policy
    assert (p.spill, p.spill_share) == (keys.get("spill", True), keys.get("spill_share", 0.5))
    assert (p.model, p.max_seq_len, p.max_output_tokens) == ("m", 2048, 1024)


def test_degraded_mode_applies_the_requests_floor_in_the_target() -> None:
    """Refused for its TTFT in short, the request spills; medium's e2e check uses the request's
    e2e SLO (0.5 s) and degraded floor: 0.19 + (a - 1) * 0.012 <= 0.5 gives a = 26."""
    short = dataclasses.replace(SHORT, e2e_slo_s=0.5, degraded_min_tokens=2)
    a, _ = _admitter(short, MEDIUM)
    _fill_short(a)
    d = a.decide(_req(max_tokens=100))
    assert isinstance(d, Admitted) and d.bucket == "medium"
    assert (d.terms.degraded, d.terms.max_tokens) == (True, 26)


def test_spilled_slot_returns_at_its_end_and_the_tenant_is_charged_once() -> None:
    a, _ = _admitter(SHORT, MEDIUM, tenants=(TenantPolicy("acme", tokens_per_minute=10_000),))
    _fill_short(a)
    d = a.decide(_req(tenant="acme"))
    assert isinstance(d, Admitted) and d.bucket == "medium"
    state = a.ratelimit("acme")
    # Charged once: 100 prompt + 11 allowance (the filling requests have no tenant).
    assert state is not None and state.remaining_tokens == 10_000 - 111
    assert isinstance(a.decide(_req(tenant="acme")), Refused)  # share full
    d.ticket.finish(Outcome.COMPLETED, 11)
    d2 = a.decide(_req(tenant="acme"))
    assert isinstance(d2, Admitted) and d2.spilled_from == "short"
    snap = a.snapshot()["buckets"]["medium"]
    assert snap["spilled_in_flight"] == 1


def test_every_end_of_a_spilled_ticket_returns_its_slot() -> None:
    for end in (lambda d: d.ticket.refused(0.5),
                lambda d: d.ticket.withdraw(RejectReason.CONCURRENCY)):
        a, _ = _admitter(SHORT, MEDIUM)
        _fill_short(a)
        d = a.decide(_req())
        assert isinstance(d, Admitted) and d.spilled_from == "short"
        end(d)
        end(d)  # idempotent: returned once
        assert a.snapshot()["buckets"]["medium"]["spilled_in_flight"] == 0


# --- The property: a bucket's own traffic keeps its configured share -------------------------

def _play(buckets: tuple[BucketPolicy, ...],
          arrivals: list[tuple[float, str, int]]) -> dict[str, int]:
    """Own-traffic goodput per bucket: arrivals ``(time, bucket, tokens)`` decided on a virtual
    clock; each admitted request's first token and end come at the times its timeline
    predicts (its output: the whole allowance, as worst-case prediction reserves), so every
    admitted request meets its SLO and a bucket's own goodput is the count of its own requests
    it admitted itself (spilled ones are the target's goodput, not counted here)."""
    a, clock = _admitter(*buckets)
    slo = {b.name: b.ttft_slo_s for b in buckets}
    seq = itertools.count()
    events: list[tuple[float, int, Callable[[], None]]] = []
    for t, bucket, tokens in arrivals:
        heapq.heappush(events, (t, next(seq), _arrive(a, clock, events, seq, slo,
                                                      bucket, tokens)))
    own = dict.fromkeys(slo, 0)
    got: list[tuple[str, str]] = []
    while events:
        t, _, run = heapq.heappop(events)
        clock.t = t
        run()
        got.extend(_GOT)
        _GOT.clear()
    for origin, to in got:
        if origin == to:
            own[origin] += 1
    return own


_GOT: list[tuple[str, str]] = []


def _arrive(a: TimelineAdmitter, clock: Clock, events: list[tuple[float, int, Callable[[], None]]],
            seq: itertools.count[int], slo: dict[str, float], bucket: str,
            tokens: int) -> Callable[[], None]:
    def run() -> None:
        d = a.decide(_req(bucket, tokens))
        if not isinstance(d, Admitted):
            return
        now, ttft = clock.t, d.terms.predicted_ttft_s
        assert ttft is not None and ttft <= slo[bucket] + 1e-9  # the request's own SLO
        shape = {"short": SHORT, "medium": MEDIUM}[d.bucket].replicas[0]
        end = now + d.predicted_wait_s + shape.service_time(d.terms.reserve_tokens)
        heapq.heappush(events, (now + ttft, next(seq), d.ticket.first_token))
        heapq.heappush(events, (end, next(seq), lambda: d.ticket.finish(
            Outcome.COMPLETED, d.terms.reserve_tokens)))
        _GOT.append((bucket, d.bucket))
    return run


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.tuples(st.floats(0.0, 0.15), st.booleans(), st.integers(1, 40)),
                     min_size=1, max_size=120),
       share=st.sampled_from([0.5, 1.0]))
def test_own_goodput_keeps_its_share(gaps: list[tuple[float, bool, int]], share: float) -> None:
    """Random arrivals to a short and a medium bucket (medium with 2 slots, spill_share
    ``share``): with spill on, short's own goodput is the same (spilled requests never touch
    its schedule) and medium's own goodput is at least ``(1 - share)`` of what it is with spill
    off -- with 1 - share = 0 only the claim that nothing breaks the SLO is left."""
    t, arrivals = 0.0, []
    for gap, short, tokens in gaps:
        t += gap
        arrivals.append((t, "short" if short else "medium", tokens))
    medium = dataclasses.replace(MEDIUM, spill_share=share)
    on = _play((SHORT, medium), arrivals)
    off = _play((dataclasses.replace(SHORT, spill=False), medium), arrivals)
    assert on["short"] == off["short"]
    assert on["medium"] >= (1 - share) * off["medium"]


# --- Padding accounting (router.attempts.padding_tokens) ---------------------------------------

@pytest.mark.parametrize(("prompt", "completion", "want"), [
    (100, 11, (1024 - 100, 1024 - 11)),  # the shape's prompt part is 2048 - 1024 = 1024
    (1024, 1024, (0, 0)),  # fills the shape exactly
    (1500, 100, (0, 2048 - 1500 - 100)),  # a prompt past the prompt part takes output room
    (2000, 48, (0, 0)),
    (0, 1, (1024, 1023)),
], ids=["short_request", "full_shape", "long_prompt", "long_prompt_full", "empty_prompt"])
def test_padding_tokens(prompt: int, completion: int, want: tuple[int, int]) -> None:
    bucket = parse_config({"buckets": [{"name": "short", "model": "m",
                                        "artifact": "llama-3.1-8b-2k",
                                        "backends": ["http://127.0.0.1:1"]}]}).buckets[0]
    got = padding_tokens(bucket, prompt, completion)
    assert got == want
    assert sum(got) == 2048 - prompt - completion  # the unused part of the shape, split in two
