"""``lpu-bench decision-cost``: the cost of one admission decision of the timeline controller.

Run: ``lpu-bench decision-cost [--cycles N] [--repeats K] [--out FILE]``

Each cycle is one ``decide`` (admitted) plus one ``finish`` of the oldest
in-flight request (ended early, which rebuilds its replica's timeline), on a
virtual clock that advances so the bucket stays loaded: every replica has all
8 slots running and about half as many requests queued behind them, the steady
state of a bucket near capacity. A second figure times ``decide`` alone, and a
third a refused ``decide`` (SLO too tight), the path an overloaded router takes
most.

A second table times what one request costs admission on the path the router
runs (one replica of 64 slots, the default priority rules, adaptive margin):
``decide`` + ``first_token`` + ``finish``, at light load (a slot free for every
request: 32 of 64 in flight) and at a loaded point (every slot running and 16
requests queued), each without and with a metrics registry (the counters,
histograms and gauges the controller keeps). The first token of a request is
reported when its prefill is over, its finish at about 70% of its allowance. Each
point runs without and with ``/load`` reports every 50 ms (a backend that frees each slot
when the benchmark finishes its request), which keep a floor under the timeline as in
production.

Figures are the best (``--best``: the machine is shared, the least disturbed run
is the cost) or the median over ``--repeats`` runs, in microseconds, measured with
``perf_counter_ns``; they depend on the machine and its load, so the machine is
printed with them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import deque
from pathlib import Path

from prometheus_client import CollectorRegistry

from benchmarks.machine import describe
from lpu_protocol.load_report import LoadReport
from router.admission import AdmissionRequest, Admitted, Decision, Ticket
from router.admission.controller import TimelineAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape
from router.metrics import make_metrics
from router.outcomes import Outcome

__all__ = ["HELP", "configure", "execute"]

HELP = "the CPU cost of one timeline admission decision (micro-benchmark, no I/O)"
SLOTS = 8
PREFILL_S = 0.19  # llama-3.1-8b-8k
PER_TOKEN_S = 0.001786
MAX_TOKENS = 256
QUEUE_PER_REPLICA = SLOTS // 2
CYCLE_SLOTS = 64
"""Slots of the one replica of the per-request table (the router's light-load case)."""
LIGHT_IN_FLIGHT = CYCLE_SLOTS // 2
LOADED_QUEUE = 16
REPORT_EVERY_S = 0.05
"""The router's default ``load_poll_interval_s``."""


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _admitter(replicas: int, clock: _Clock, ttft_slo_s: float) -> TimelineAdmitter:
    shapes = tuple(
        ReplicaShape(f"http://r{i}", SLOTS, PREFILL_S, PER_TOKEN_S) for i in range(replicas)
    )
    bucket = BucketPolicy("b", shapes, ttft_slo_s=ttft_slo_s, e2e_slo_s=60.0)
    return TimelineAdmitter(AdmissionSettings(buckets=(bucket,)), clock=clock)


def _run(replicas: int, cycles: int) -> tuple[float, float, float]:
    """(us per decide+finish cycle, us per decide, us per refused decide)."""
    clock = _Clock()
    a = _admitter(replicas, clock, ttft_slo_s=30.0)
    req = AdmissionRequest("b", prompt_tokens=500, max_tokens=MAX_TOKENS)
    service = ReplicaShape("x", SLOTS, PREFILL_S, PER_TOKEN_S).service_time(MAX_TOKENS)
    depth = replicas * (SLOTS + QUEUE_PER_REPLICA)
    # Requests end after ~70% of their allowance, so one arrives per that / capacity.
    step = 0.7 * service / (replicas * SLOTS)
    live: deque[Decision] = deque()
    for _ in range(depth):
        live.append(a.decide(req))
    decide_ns = cycle_ns = 0
    for _ in range(cycles):
        clock.t += step
        t0 = time.perf_counter_ns()
        d = a.decide(req)
        t1 = time.perf_counter_ns()
        old = live.popleft()
        if isinstance(old, Admitted):
            old.ticket.finish(Outcome.COMPLETED, int(MAX_TOKENS * 0.7))
        t2 = time.perf_counter_ns()
        decide_ns += t1 - t0
        cycle_ns += t2 - t0
        live.append(d)
    tight = _admitter(replicas, clock, ttft_slo_s=0.2)
    for _ in range(replicas * SLOTS * 2):
        tight.decide(req)
    refuse_ns = 0
    for _ in range(cycles):
        t0 = time.perf_counter_ns()
        tight.decide(req)
        refuse_ns += time.perf_counter_ns() - t0
    return cycle_ns / cycles / 1e3, decide_ns / cycles / 1e3, refuse_ns / cycles / 1e3


def _report(decided: deque[float], hold_s: float, now: float) -> LoadReport:
    """The backend's ``/load`` answer: it runs the oldest live requests (``decided``: when
    each was admitted, oldest first) on its slots, FIFO, each until the benchmark finishes
    it, ``hold_s`` after its admission; the rest wait."""
    running = min(len(decided), CYCLE_SLOTS)
    ends = [max(0.0, decided[i] + hold_s - now) for i in range(running)]
    free = sorted([0.0] * (CYCLE_SLOTS - running) + ends)
    return LoadReport(CYCLE_SLOTS, running, len(decided) - running, tuple(free),
                      PREFILL_S, PER_TOKEN_S)


def _cycle(cycles: int, *, loaded: bool, metrics: bool, reports: bool = False) -> float:
    """Microseconds per ``decide`` + ``first_token`` + ``finish`` of one request; with
    ``reports``, a ``/load`` report merged every ``REPORT_EVERY_S`` (not timed: it is
    per poll, not per request) keeps a floor under the timeline, as in production."""
    clock = _Clock()
    shape = ReplicaShape("http://r0", CYCLE_SLOTS, PREFILL_S, PER_TOKEN_S)
    # Loaded, every slot is busy: a target of 1 keeps the guard from shedding the queue.
    bucket = BucketPolicy("b", (shape,), ttft_slo_s=30.0, e2e_slo_s=60.0,
                          target_utilization=1.0 if loaded else 0.85)
    a = TimelineAdmitter(AdmissionSettings(buckets=(bucket,)), clock=clock,
                         metrics=make_metrics(CollectorRegistry()) if metrics else None)
    req = AdmissionRequest("b", prompt_tokens=500, max_tokens=MAX_TOKENS)
    depth = CYCLE_SLOTS + LOADED_QUEUE if loaded else LIGHT_IN_FLIGHT
    # One request ends per step after ~70% of its allowance, so ``depth`` stay live.
    step = 0.7 * shape.service_time(MAX_TOKENS) / depth
    # Its first token is reported once its prefill is over: at once when a slot is free,
    # after the queue ahead of it has moved on when loaded.
    lag = min(depth - 1, (LOADED_QUEUE if loaded else 0) + int(PREFILL_S / step) + 1)
    live: deque[Ticket] = deque()
    decided: deque[float] = deque()
    for _ in range(depth):
        d = a.decide(req)
        assert isinstance(d, Admitted), d
        live.append(d.ticket)
        decided.append(clock.t)
        clock.t += step
    total = 0
    next_report = clock.t
    for _ in range(cycles):
        clock.t += step
        if reports and clock.t >= next_report:
            a.observe_load("b", shape.url, _report(decided, depth * step, clock.t), clock.t)
            next_report = clock.t + REPORT_EVERY_S
        t0 = time.perf_counter_ns()
        d = a.decide(req)
        live[-lag].first_token()
        live.popleft().finish(Outcome.COMPLETED, int(MAX_TOKENS * 0.7))
        total += time.perf_counter_ns() - t0
        assert isinstance(d, Admitted), d
        live.append(d.ticket)
        decided.popleft()
        decided.append(clock.t)
    return total / cycles / 1e3


def configure(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--cycles", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--best", action="store_true",
                    help="report the best of the repeats instead of the median")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")


def execute(args: argparse.Namespace) -> int:
    machine = describe()
    pick = min if args.best else statistics.median
    print(f"machine: {machine['nproc']} CPUs, {machine['cpu']}, Python {machine['python']}")
    print(f"{args.cycles} cycles x {args.repeats} repeats"
          f" ({'best' if args.best else 'medians'})")
    print(f"per request, 1 replica of {CYCLE_SLOTS} slots: decide + first_token + finish, us")
    print(f"{'load':>22} {'reports':>8} {'no metrics':>11} {'metrics':>8}")
    requests = []
    for loaded, label in ((False, f"light ({LIGHT_IN_FLIGHT} in flight)"),
                          (True, f"loaded (queue {LOADED_QUEUE})")):
        for reports in (False, True):
            bare, metered = (
                pick([_cycle(args.cycles, loaded=loaded, metrics=m, reports=reports)
                      for _ in range(args.repeats)]) for m in (False, True))
            requests.append({"load": "loaded" if loaded else "light", "slots": CYCLE_SLOTS,
                             "reports": reports, "cycle_us": bare, "cycle_metrics_us": metered})
            print(f"{label:>22} {'yes' if reports else 'no':>8} {bare:>11.2f} {metered:>8.2f}")
    print(f"{SLOTS} slots per replica, queue ~{QUEUE_PER_REPLICA} per replica, no metrics")
    print(f"{'replicas':>8} {'decide+finish us':>17} {'decide us':>10} {'refused us':>11}")
    rows = []
    for replicas in (1, 4, 16):
        runs = [_run(replicas, args.cycles) for _ in range(args.repeats)]
        cycle, decide, refuse = (pick(col) for col in zip(*runs, strict=True))
        rows.append({"replicas": replicas, "slots": SLOTS, "decide_finish_us": cycle,
                     "decide_us": decide, "refused_decide_us": refuse})
        print(f"{replicas:>8} {cycle:>17.2f} {decide:>10.2f} {refuse:>11.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps({"machine": machine, "per_request": requests,
                                             "results": rows}, indent=2) + "\n")
    return 0
