"""Replay a trace through the router's own admission code on a virtual clock.

:func:`replay` builds the router's :class:`~router.buckets.BucketTable` and
:class:`~router.admission.controller.TimelineAdmitter` from a :class:`~router.config.RouterConfig`
(for the planner: :func:`benchmarks.plan_layout.router_config` of a candidate layout) and plays
each request of a :class:`~benchmarks.traces.Trace` as the router would see it, with
``max_tokens`` = the trace's output length (the load generator's replay sends that):

* at its arrival the clock is set to it, the table places it (its own bucket: the smallest shape
  that fits) and ``decide`` admits or refuses it;
* an admitted request reaches the replica it was given ``dispatch_s`` later and starts there on
  the first free slot, FIFO (the emulator's engine, modelled apart from the router's view); its
  first token reaches the router a prefill plus ``return_s`` after its start
  (``ticket.first_token()``), and it ends at start + the service time of its output length
  (+ ``return_s``: ``ticket.finish``). Without the delays every start is the admitter's
  prediction (``now + predicted_wait_s``, checked: :attr:`Prediction.worst_start_error_s`);
  with them the router's view errs late as in production and its adaptive margin learns it.

Events at one instant run in the order finish, first token, arrival (a slot that frees at ``t``
is free for an arrival at ``t``). Nothing here copies the rule: every admission, refusal, spill
and the placement of each request is the router's code.

Figures (:class:`Prediction`): goodput is the requests admitted whose TTFT meets their own
bucket's SLO, per second of the trace's span (first to last arrival; 1 s when it is 0); the p99
TTFT is over admitted requests (numpy's linear percentile); padding waste is the fraction of the
compiled token positions the served requests leave unused,
``1 - sum(prompt + output) / sum(max_seq_len)`` over admitted requests, at the shape that served
each.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from benchmarks.traces import Trace
from router.admission import AdmissionRequest, Admitted, Ticket
from router.admission.controller import TimelineAdmitter
from router.buckets import BucketTable
from router.config import RouterConfig
from router.errors import Rejection
from router.outcomes import Outcome

__all__ = ["BucketOutcome", "Prediction", "replay"]

_FINISH, _FIRST = 0, 1


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass(slots=True)
class BucketOutcome:
    """One bucket's figures. "Own" requests are those this bucket is the smallest fit for."""

    name: str
    max_seq_len: int
    replicas: int
    slots: int
    ttft_slo_s: float
    offered: int = 0
    """Own requests."""
    admitted: int = 0
    """Own requests admitted (here or, spilled, to a larger bucket)."""
    good: int = 0
    """Own requests admitted whose TTFT met this bucket's SLO."""
    spilled_out: int = 0
    """Own requests admitted to a larger bucket."""
    served: int = 0
    """Requests this bucket's replicas ran (own and spilled in)."""
    spilled_in: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    """Own requests refused, by reason."""
    busy_s: float = 0.0
    """Slot-seconds the served requests held."""
    used_tokens: int = 0
    shape_tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    """TTFT of every request served here."""
    goodput_rps: float = 0.0
    utilization: float = 0.0
    p99_ttft_s: float | None = None

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.used_tokens / self.shape_tokens if self.shape_tokens else 0.0


@dataclass(slots=True)
class Prediction:
    span_s: float
    offered: int
    admitted: int
    good: int
    violations: int
    """Admitted requests whose TTFT missed their own bucket's SLO."""
    unplaceable: int
    """Requests no bucket fits (400 at the router)."""
    goodput_rps: float
    p99_ttft_s: float | None
    padding_waste: float
    buckets: tuple[BucketOutcome, ...]
    worst_start_error_s: float = 0.0
    """Largest gap between a request's start on its backend and the admitter's prediction
    (0 without dispatch and return delays: the timeline is exact)."""

    @property
    def served_fraction(self) -> float:
        """Good requests over offered ones (1 when nothing was offered)."""
        return self.good / self.offered if self.offered else 1.0

    @property
    def refused(self) -> int:
        return self.offered - self.admitted


def _p99(xs: list[float]) -> float | None:
    return float(np.percentile(xs, 99)) if xs else None


def replay(config: RouterConfig, trace: Trace, *, margin: float, dispatch_s: float = 0.0,
           return_s: float = 0.0, dispatch_sample: Sequence[float] = (),
           seed: int = 0) -> Prediction:
    """Play ``trace`` through ``config``'s admission; ``margin``: the token estimate's (the
    router's :data:`~lpu_protocol.tokens.ESTIMATE_UNDERCOUNT_MARGIN` without a tokenizer, 0
    with one). ``dispatch_s``: seconds from a decision until the backend has the request;
    ``return_s``: from a token leaving the backend until the router sees it (both 0: the
    backend starts each request exactly when the timeline predicts). ``dispatch_sample``:
    measured delays (seconds); when given, each admitted request's dispatch delay is one of
    them drawn at random (``numpy.random.default_rng(seed)``, so a replay is reproducible)
    added to ``dispatch_s``: a delay that varies from request to request, as on a busy host."""
    clock = _Clock()
    admitter = TimelineAdmitter(config.admission, clock=clock)
    table = BucketTable(config.buckets, margin=margin)
    by_name = {b.name: b for b in config.buckets}
    out = {b.name: BucketOutcome(b.name, b.max_seq_len, len(b.backends),
                                 b.policy.replicas[0].slots, b.policy.ttft_slo_s)
           for b in config.buckets}
    model = config.buckets[0].model
    events: list[tuple[float, int, int, Ticket]] = []
    # The backends, apart from the router's view: per replica its slots' free times, FIFO in
    # the order requests reach it (the emulator's engine).
    free = {r.url: [0.0] * r.slots for b in config.buckets for r in b.policy.replicas}
    all_ttfts: list[float] = []
    seq = unplaceable = violations = 0
    worst_error = 0.0
    at, prompts, outputs = (a.tolist() for a in (trace.at_s, trace.prompt_tokens,
                                                 trace.output_tokens))
    draws = (np.asarray(dispatch_sample, dtype=np.float64)[
        np.random.default_rng(seed).integers(0, len(dispatch_sample), len(at))].tolist()
        if len(dispatch_sample) else [0.0] * len(at))
    for t, prompt, output, extra in zip(at, prompts, outputs, draws, strict=True):
        while events and events[0][0] <= t:
            when, kind, _, ticket = heapq.heappop(events)
            clock.t = when
            if kind == _FINISH:
                ticket.finish(Outcome.COMPLETED, None)
            else:
                ticket.first_token()
        clock.t = t
        try:
            place = table.place(model, prompt, output)
        except Rejection:
            unplaceable += 1
            continue
        own = out[place.bucket.name]
        own.offered += 1
        req = AdmissionRequest(place.bucket.name, prompt, place.max_tokens,
                               need_tokens=table.need(prompt))
        d = admitter.decide(req)
        if not isinstance(d, Admitted):
            own.refused[str(d.reason)] += 1
            continue
        where = out[d.bucket or place.bucket.name]
        shape = by_name[where.name].policy.replicas[0]
        service = shape.service_time(min(output, d.terms.max_tokens))
        slots = free[d.backend]
        start = max(t + dispatch_s + extra, slots[0])
        heapq.heapreplace(slots, start + service)
        worst_error = max(worst_error, abs(start - (t + d.predicted_wait_s)))
        ttft = start - t + shape.prefill_s + return_s
        seq += 1
        heapq.heappush(events, (t + ttft, _FIRST, seq, d.ticket))
        heapq.heappush(events, (start + service + return_s, _FINISH, seq, d.ticket))
        own.admitted += 1
        if ttft <= own.ttft_slo_s:
            own.good += 1
        else:
            violations += 1
        if where is not own:
            own.spilled_out += 1
            where.spilled_in += 1
        where.served += 1
        where.busy_s += service
        where.used_tokens += prompt + min(output, d.terms.max_tokens)
        where.shape_tokens += where.max_seq_len
        where.ttfts.append(ttft)
        all_ttfts.append(ttft)
    span = trace.duration_s or 1.0
    for b in out.values():
        b.goodput_rps = b.good / span
        b.utilization = b.busy_s / (span * b.replicas * b.slots)
        b.p99_ttft_s = _p99(b.ttfts)
    buckets = tuple(out.values())
    used = sum(b.used_tokens for b in buckets)
    shape_tokens = sum(b.shape_tokens for b in buckets)
    good = sum(b.good for b in buckets)
    return Prediction(
        span_s=span, offered=sum(b.offered for b in buckets),
        admitted=sum(b.admitted for b in buckets), good=good, violations=violations,
        unplaceable=unplaceable, goodput_rps=good / span, p99_ttft_s=_p99(all_ttfts),
        padding_waste=1.0 - used / shape_tokens if shape_tokens else 0.0, buckets=buckets,
        worst_start_error_s=worst_error)
