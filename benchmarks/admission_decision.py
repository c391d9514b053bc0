"""``lpu-bench decision-cost``: the cost of one admission decision of the timeline controller.

Run: ``lpu-bench decision-cost [--cycles N] [--repeats K] [--out FILE]``

Each cycle is one ``decide`` (admitted) plus one ``finish`` of the oldest
in-flight request (ended early, which rebuilds its replica's timeline), on a
virtual clock that advances so the bucket stays loaded: every replica has all
8 slots running and about half as many requests queued behind them, the steady
state of a bucket near capacity. A second figure times ``decide`` alone, and a
third a refused ``decide`` (SLO too tight), the path an overloaded router takes
most. Figures are medians over ``--repeats`` runs, in microseconds, measured
with ``perf_counter_ns``; they depend on the machine and its load, so the
machine is printed with them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import deque
from pathlib import Path

from benchmarks.machine import describe
from router.admission import AdmissionRequest, Admitted, Decision
from router.admission.controller import TimelineAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape
from router.outcomes import Outcome

__all__ = ["HELP", "configure", "execute"]

HELP = "the CPU cost of one timeline admission decision (micro-benchmark, no I/O)"
SLOTS = 8
PREFILL_S = 0.19  # llama-3.1-8b-8k
PER_TOKEN_S = 0.001786
MAX_TOKENS = 256
QUEUE_PER_REPLICA = SLOTS // 2


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


def configure(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--cycles", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")


def execute(args: argparse.Namespace) -> int:
    machine = describe()
    print(f"machine: {machine['nproc']} CPUs, {machine['cpu']}, Python {machine['python']}")
    print(f"{SLOTS} slots per replica, queue ~{QUEUE_PER_REPLICA} per replica,"
          f" {args.cycles} cycles x {args.repeats} repeats (medians)")
    print(f"{'replicas':>8} {'decide+finish us':>17} {'decide us':>10} {'refused us':>11}")
    rows = []
    for replicas in (1, 4, 16):
        runs = [_run(replicas, args.cycles) for _ in range(args.repeats)]
        cycle, decide, refuse = (statistics.median(col) for col in zip(*runs, strict=True))
        rows.append({"replicas": replicas, "slots": SLOTS, "decide_finish_us": cycle,
                     "decide_us": decide, "refused_decide_us": refuse})
        print(f"{replicas:>8} {cycle:>17.2f} {decide:>10.2f} {refuse:>11.2f}")
    if args.out is not None:
        args.out.write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    return 0
