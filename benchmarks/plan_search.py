"""The layout search of ``lpu-bench plan --trace``: shapes, replicas and spill for a trace.

Objective: the fewest replicas whose predicted goodput (requests admitted within their own
bucket's TTFT SLO, :mod:`benchmarks.plan_replay`) is at least ``goodput_target`` of the offered
requests; ties go to the lower padding waste, then the lower p99 TTFT, then fewer shapes. When no
layout within ``max_replicas`` reaches the target, the highest goodput wins (then the same
ties). Every figure comes from replaying the trace through the router's admission code.

Pruning keeps the search to a few dozen replays (each ~0.1 s for the shipped trace):

* shapes: subsets of at most ``max_artifacts`` of the candidate shapes whose largest is the
  *covering* shape (the smallest candidate that places every request the candidates can place,
  so a set never loses requests a smaller top shape would serve), and in which every shape is
  some request's smallest fit (a shape nobody fits first only costs replicas), so bucket
  boundaries are always at shapes;
* replicas: per bucket, the theory's lower bound first: the fewest replicas whose M/D/c p99
  TTFT (Poisson arrivals at the bucket's mean rate split evenly, every service the bucket's
  mean service time: the deterministic, smooth best case) meets the SLO; then one more replica
  at a time to the bucket that loses the most of its own requests, until the target is met or
  the limit reached;
* spill (when the router has it and ``spill`` allows): the same growth with spill on, and from
  the spill-off result one replica fewer at a time while spill keeps the target; the layout
  found is then recommended with spill on (the router's default) unless spill lowers its
  predicted goodput;
* a shape set whose lower bound already exceeds the best feasible layout's replicas is skipped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks import theory
from benchmarks.plan_layout import SPILL_SUPPORTED, BucketPlan, Layout, router_config
from benchmarks.plan_replay import Prediction, replay
from benchmarks.traces import Trace
from lpu_protocol.artifact import Artifact

__all__ = ["Candidate", "SearchOptions", "SearchResult", "Slo", "own_buckets", "own_trace",
           "search", "theory_p99", "theory_replicas"]

Slo = Callable[[Artifact], float]
"""The TTFT SLO (seconds) of a bucket of that shape."""


@dataclass(frozen=True, slots=True)
class SearchOptions:
    slo: Slo
    max_artifacts: int = 3
    max_replicas: int = 16
    """Replicas of all buckets together, at most."""
    goodput_target: float = 0.99
    spill: str = "auto"
    """``auto`` (with and without, whichever is better), ``on`` or ``off``."""
    margin: float = 0.03
    """The router's token estimate margin (:mod:`router.buckets`)."""
    time_scale: float = 1.0
    """The durations of ``shapes`` are their artifacts' times this (:class:`Layout`)."""
    dispatch_s: float = 0.0
    """Decision to backend, seconds (:func:`benchmarks.plan_replay.replay`)."""
    return_s: float = 0.0
    """Backend to router, seconds."""


@dataclass(frozen=True, slots=True)
class Candidate:
    layout: Layout
    prediction: Prediction


@dataclass(frozen=True, slots=True)
class SearchResult:
    best: Candidate
    evaluated: tuple[Candidate, ...]
    """Every layout replayed, in the order replayed."""
    covering: Artifact


def own_buckets(trace: Trace, shapes: list[Artifact], margin: float) -> np.ndarray:
    """Index into ``shapes`` (sorted by length) of each request's smallest fit, -1 if none: the
    router's first placement rule (``need(prompt) + max_tokens <= max_seq_len`` and
    ``max_tokens <= max_output_tokens``), vectorized for the pruning only (the replays place with
    :class:`router.buckets.BucketTable`)."""
    need = np.ceil(trace.prompt_tokens * (1.0 + margin)).astype(np.int64) if margin \
        else trace.prompt_tokens
    total = need + trace.output_tokens
    own = np.full(len(trace), -1, dtype=np.int64)
    for i in range(len(shapes) - 1, -1, -1):
        s = shapes[i]
        fits = (total <= s.max_seq_len) & (trace.output_tokens <= s.max_output_tokens)
        own[fits] = i
    return own


def theory_replicas(shape: Artifact, trace: Trace, slo_s: float) -> int | None:
    """The M/D/c lower bound on replicas for ``trace`` (its requests all in this bucket), or
    None when the prefill alone misses the SLO: the fewest replicas, from the stability bound
    up, whose p99 TTFT at ``rate / replicas`` meets ``slo_s``."""
    if shape.prefill_s >= slo_s:
        return None
    if not len(trace):
        return 1
    service = shape.prefill_s + (float(trace.output_tokens.mean()) - 1.0) * shape.per_token_s
    rate = len(trace) / (trace.duration_s or 1.0)
    n = max(1, math.floor(rate * service / shape.slots) + 1)  # rho < 1
    while theory.mdc_ttft_percentile(0.99, rate / n, shape.slots, service,
                                     shape.prefill_s) > slo_s:
        n += 1
    return n


def theory_p99(shape: Artifact, replicas: int, trace: Trace) -> float | None:
    """The exact M/D/c p99 TTFT of a bucket whose requests (``trace``) all make one output
    length, arriving as a Poisson stream at the trace's mean rate split evenly over
    ``replicas``, every one admitted; None when the lengths differ (the theory does not apply)
    or the queue is unstable."""
    if not len(trace) or np.any(trace.output_tokens != trace.output_tokens[0]):
        return None
    service = shape.service_time(int(trace.output_tokens[0]))
    rate = len(trace) / (trace.duration_s or 1.0) / replicas
    if rate * service >= shape.slots:
        return None
    return theory.mdc_ttft_percentile(0.99, rate, shape.slots, service, shape.prefill_s)


def own_trace(trace: Trace, shapes: list[Artifact], i: int, margin: float) -> Trace:
    """The requests whose smallest fit among ``shapes`` (sorted) is ``shapes[i]``."""
    return _subset(trace, own_buckets(trace, shapes, margin) == i)


def _subset(trace: Trace, mask: np.ndarray) -> Trace:
    return Trace(trace.name, trace.at_s[mask], trace.prompt_tokens[mask],
                 trace.output_tokens[mask])


def _key(c: Candidate, target: float) -> tuple[float, ...]:
    p = c.prediction
    feasible = p.served_fraction >= target
    p99 = p.p99_ttft_s if p.p99_ttft_s is not None else math.inf
    first = (0.0, float(c.layout.replicas)) if feasible else (1.0, -p.goodput_rps)
    return (*first, round(p.padding_waste, 4), p99, float(len(c.layout.buckets)),
            float(c.layout.replicas))


class _Search:
    def __init__(self, trace: Trace, opts: SearchOptions) -> None:
        self.trace = trace
        self.opts = opts
        self.cache: dict[Layout, Candidate] = {}
        self.order: list[Candidate] = []

    def evaluate(self, layout: Layout) -> Candidate:
        hit = self.cache.get(layout)
        if hit is None:
            o = self.opts
            hit = Candidate(layout, replay(router_config(layout), self.trace, margin=o.margin,
                                           dispatch_s=o.dispatch_s, return_s=o.return_s))
            self.cache[layout] = hit
            self.order.append(hit)
        return hit

    def ok(self, c: Candidate) -> bool:
        return c.prediction.served_fraction >= self.opts.goodput_target

    def grow(self, layout: Layout) -> Candidate:
        c = self.evaluate(layout)
        while not self.ok(c) and c.layout.replicas < self.opts.max_replicas:
            lost = [b.offered - b.good for b in c.prediction.buckets]
            counts = [b.replicas for b in c.layout.buckets]
            counts[int(np.argmax(lost))] += 1
            c = self.evaluate(c.layout.with_replicas(tuple(counts)))
        return c

    def shrink(self, c: Candidate) -> Candidate:
        """One replica fewer at a time while the target still holds (best goodput first)."""
        while True:
            trials = []
            for i, b in enumerate(c.layout.buckets):
                if b.replicas > 1:
                    counts = [x.replicas for x in c.layout.buckets]
                    counts[i] -= 1
                    trials.append(self.evaluate(c.layout.with_replicas(tuple(counts))))
            ok = [t for t in trials if self.ok(t)]
            if not ok:
                return c
            c = min(ok, key=lambda t: _key(t, self.opts.goodput_target))


def _shape_sets(shapes: list[Artifact], own: np.ndarray, covering: int,
                max_artifacts: int) -> list[tuple[int, ...]]:
    smaller = range(covering)
    out = []
    for k in range(max_artifacts):
        for combo in itertools.combinations(smaller, k):
            chosen = (*combo, covering)
            # Each shape must be some request's smallest fit among the chosen ones.
            firsts = set()
            for i in np.unique(own[own >= 0]).tolist():
                firsts.add(next(j for j in chosen if j >= i))
            if firsts == set(chosen):
                out.append(chosen)
    return out


def search(trace: Trace, shapes: list[Artifact], model: str, opts: SearchOptions) -> SearchResult:
    """The best layout for ``trace`` from ``shapes`` (see the module docstring)."""
    if not shapes:
        raise ValueError("no candidate shapes")
    if opts.max_artifacts < 1 or opts.max_replicas < 1:
        raise ValueError("max_artifacts and max_replicas must be >= 1")
    shapes = sorted(shapes, key=lambda a: a.max_seq_len)
    own = own_buckets(trace, shapes, opts.margin)
    placed = own[own >= 0]
    covering = int(placed.max()) if placed.size else len(shapes) - 1
    s = _Search(trace, opts)
    spills = [False, True] if opts.spill == "auto" else [opts.spill == "on"]
    if not SPILL_SUPPORTED:
        spills = [False]
    plans: list[tuple[int, Layout]] = []
    for chosen in _shape_sets(shapes, own, covering, min(opts.max_artifacts, covering + 1)):
        lower: list[int] = []
        buckets = []
        prev = -1
        for j in chosen:
            mine = (own > prev) & (own <= j)
            prev = j
            art = shapes[j]
            slo = opts.slo(art)
            n = theory_replicas(art, _subset(trace, mine), slo)
            lower.append(n if n is not None else 0)
            buckets.append(BucketPlan(art, 1, slo))
        if 0 in lower:
            continue  # a shape whose prefill alone misses its SLO
        if sum(lower) > opts.max_replicas:
            lower = [1] * len(lower)
        layout = Layout(model, tuple(buckets), time_scale=opts.time_scale)
        plans.append((sum(lower), layout.with_replicas(tuple(lower))))
    if not plans:
        raise ValueError("no layout of these shapes can meet the SLO (prefill exceeds it)")
    plans.sort(key=lambda p: p[0])
    best: Candidate | None = None
    target = opts.goodput_target
    for bound, layout in plans:
        if best is not None and s.ok(best) and bound > best.layout.replicas:
            continue
        found = []
        for spill in spills:
            found.append(s.grow(layout.with_spill(spill)))
        if len(found) == 2 and s.ok(found[0]):
            found.append(s.shrink(s.evaluate(found[0].layout.with_spill(True))))
        for c in found:
            if best is None or _key(c, target) < _key(best, target):
                best = c
    assert best is not None
    if not best.layout.spill and opts.spill == "auto" and SPILL_SUPPORTED:
        other = s.evaluate(best.layout.with_spill(True))
        if other.prediction.good >= best.prediction.good:
            best = other
    return SearchResult(best, tuple(s.order), shapes[covering])
