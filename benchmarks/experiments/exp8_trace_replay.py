"""Experiment 8: a real trace replayed through the router and emulators - timeline admission
with spill to a larger shape, without it, and admission off, on the same arrivals.

The trace: the Azure LLM inference trace 2023, code service (``../shared/traces/``, 8,819
requests over an hour; CC-BY, from the Azure Public Dataset; Patel et al., "Splitwise:
Efficient generative LLM inference using phase splitting", ISCA 2024). Each request is sent
with a prompt the router counts as the trace's ``ContextTokens`` and ``max_tokens`` = its
``GeneratedTokens``; the emulators produce exactly the allowance, so every request makes the
trace's output length.

Layout (:data:`LAYOUT`): one model at two compiled shapes, ``short`` = ``llama-3.1-8b-2k``
(8 slots, 80 ms prefill) and ``medium`` = ``llama-3.1-8b-8k`` (8 slots, 190 ms prefill), one
replica each, TTFT SLO 4x each shape's prefill (the issue's setting). Why these two: every
request of the trace fits 8K (the longest prompt is 7,437 tokens) and 62% fit 2K, so a 32K
shape would take no traffic. (The planner's own recommendation for the trace at 1x is one 8K
replica, where spill has nothing to do; its simulator predicts this layout instead:
:func:`prediction`.)

Speeds. ``load`` is the trace's arrival rate relative to the artifacts' own timings: at 1x the
replay is the trace as it happened; at ``2x`` (:func:`overload_factor`) the arrivals are
compressed until the offered slot-seconds are twice the layout's slots. A run multiplies every
artifact duration by ``scale`` (the emulators' ``time_scale``; the router's buckets get the same
scaled shape) and divides the trace's gaps by ``load / scale``, so its wall time is the trace
window's length times ``scale / load``. Every figure is reported in model time (the artifacts'
own seconds), so the speeds read in the same units.

The planner beside the measurement (:func:`prediction`) models the same system: during each
timeline arm, probe requests (:func:`probes`: one output token, every :data:`PROBE_EVERY_S`
of model time, alternating the buckets) go through the same router and emulators beside the
replay, and each one's TTFT at the client less its TTFT on the emulator's recorded schedule is
one sample of the delay the router, the client and the loopback add to a request on this busy
host (:func:`probe_delays`). The simulator draws each request's dispatch delay from those
samples. At a time scale below 1 that wall delay grows in model time by ``1 / scale`` (the
earlier 1x run at scale 0.25 predicted a p99 TTFT 30% short for this reason), so no speed
runs below scale 1 (:func:`replays`).

The issue's own scenario (``10x``, full run only): the trace at 10x its rate through the demo's
layout (:data:`DEMO_LAYOUT`: short 2K / medium 8K / long 32K, one replica each, the same SLO
rule), the setting of the issue's "Why" paragraph, with the same arms. Its window is the
trace's busiest :data:`ISSUE_WINDOW_S` at scale 2 (:func:`replays` says why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks import plan_replay
from benchmarks.experiments import (
    ExperimentResult,
    SweepConfig,
    replay_figures,
    replay_report,
    replay_spill_bound,
)
from benchmarks.experiments.claims import Claim
from benchmarks.experiments.output import write_experiment
from benchmarks.experiments.replay_figures import Served
from benchmarks.experiments.rig import Pool, router_config, serve
from benchmarks.loadgen import LoadConfig, run_load
from benchmarks.prompts import PromptFactory
from benchmarks.records import ClientOutcome, RequestRecord
from benchmarks.schedule_polling import polling, read_schedule
from benchmarks.traces import Trace, read_trace
from benchmarks.workload import PlannedRequest
from lpu_protocol.artifact import Artifact, builtin_artifact
from lpu_protocol.tokens import ESTIMATE_UNDERCOUNT_MARGIN
from router.buckets import BucketTable
from router.config import RouterConfig, parse_config
from router.errors import Rejection

__all__ = ["ARMS", "DEMO_LAYOUT", "LAYOUT", "NAME", "PROBE_EVERY_S", "TITLE", "TRACE", "ArmRun",
           "Replay", "claims", "overload_factor", "probe_delays", "probes", "replay_arm",
           "replays", "run", "summarize"]

NAME = "exp8_trace_replay"
TITLE = "8. Trace replay: spill to a larger shape on a real trace"
TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "azure_llm_2023_code.csv"
CITATION = ("Azure LLM inference trace 2023 (code), Azure Public Dataset, CC-BY; Patel et al.,"
            " \"Splitwise: Efficient generative LLM inference using phase splitting\", ISCA 2024")
Layout = tuple[tuple[str, str, int], ...]
"""(bucket, artifact, replicas), smallest shape first."""
LAYOUT: Layout = (("short", "llama-3.1-8b-2k", 1), ("medium", "llama-3.1-8b-8k", 1))
DEMO_LAYOUT: Layout = (*LAYOUT, ("long", "llama-3.1-8b-32k", 1))
"""The demo's layout (``lpu_demo.stack``), the issue's scenario."""
ISSUE_LOAD = 10.0
"""The issue's scenario: the trace at this multiple of its rate."""
ISSUE_WINDOW_S = 300.0
"""The issue's scenario replays the trace's busiest window of this length (trace seconds)."""
SLO_PREFILLS = 4.0
"""Each bucket's TTFT SLO in multiples of its prefill."""
ARMS = ("spill", "no_spill", "off")
OVERLOAD = 2.0
ONE_X_WINDOW_S = 90.0
"""The 1x run replays the trace's busiest window of this length (trace seconds)."""
OVERLOAD_WINDOW_S = 1200.0
"""The 2x run replays a window of the hour's mean rate of this length (trace seconds)."""
"""The compressed replay offers this multiple of the layout's slots (:func:`overload_factor`)."""

PROBE_EVERY_S = 0.5
"""Model seconds between two probe requests (:func:`probes`), alternating the buckets: each
bucket gets one a second, holding a slot for one prefill (190 ms on 8K: 2.4% of its 8
slots), traffic the simulator does not see. In wall seconds it would grow with the scale
(at scale 4, 9.5% of the 8K bucket's slots)."""

_POLL_S = 1.0
"""How often the emulators' recorded schedules are read during a run (wall seconds): they
keep the latest 4,096 requests only."""


@dataclass(frozen=True, slots=True)
class Replay:
    """One speed: the trace window ``[start_s, start_s + length_s)`` (trace seconds) at ``load``
    x the trace's rate, every artifact duration times ``scale``."""

    label: str
    load: float
    scale: float
    start_s: float
    length_s: float
    layout: Layout = LAYOUT
    issue: bool = False
    """The issue's own scenario (module docstring), not one of the speeds of :data:`LAYOUT`."""

    @property
    def compression(self) -> float:
        """Trace seconds per wall second."""
        return self.load / self.scale


@dataclass(slots=True)
class ArmRun:
    """What one arm's run left: the plan, the client's records, the recorded schedules."""

    arm: str
    replay: Replay
    planned: list[PlannedRequest]
    records: list[RequestRecord]
    served: dict[str, list[Served]]
    prefix: str
    figures: dict[str, Any] = field(default_factory=dict)


def artifacts(scale: float = 1.0, layout: Layout = LAYOUT) -> list[tuple[str, Artifact, int]]:
    return [(b, builtin_artifact(a).scaled(scale), r) for b, a, r in layout]


def slo_s(layout: Layout = LAYOUT) -> dict[str, float]:
    """Each bucket's TTFT SLO, model time."""
    return {b: SLO_PREFILLS * art.prefill_s for b, art, _ in artifacts(1.0, layout)}


def _table(layout: Layout) -> BucketTable:
    """The router's own placement for ``layout`` (estimated counts: the router's margin)."""
    return BucketTable(_config("off", 1.0, layout).buckets, margin=ESTIMATE_UNDERCOUNT_MARGIN)


def home_buckets(trace: Trace, layout: Layout = LAYOUT) -> list[str | None]:
    """The bucket the router places each request in (None: no bucket fits it)."""
    table, model = _table(layout), artifacts(1.0, layout)[0][1].model
    out: list[str | None] = []
    for p, o in zip(trace.prompt_tokens.tolist(), trace.output_tokens.tolist(), strict=True):
        try:
            out.append(table.place(model, p, o).bucket.name)
        except Rejection:
            out.append(None)
    return out


def overload_factor(trace: Trace, homes: Sequence[str | None], overload: float = OVERLOAD
                    ) -> float:
    """The ``load`` at which the trace offers ``overload`` x the layout's slots: offered
    slot-seconds per second ``sum_b rate_b E[S_b]`` (each request's slot time on its home
    bucket) against ``sum_b slots_b replicas_b``."""
    work = 0.0
    for b, art, _ in artifacts():
        work += sum(art.service_time(int(o)) for o, h in
                    zip(trace.output_tokens.tolist(), homes, strict=True) if h == b)
    slots = sum(art.slots * r for _, art, r in artifacts())
    return overload * slots * trace.duration_s / work


def _window_counts(trace: Trace, length_s: float) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Arrivals in the ``length_s`` window that starts at each arrival."""
    t = trace.at_s
    return np.asarray(np.searchsorted(t, t + length_s) - np.arange(t.size), dtype=np.int64)


def busiest_window(trace: Trace, length_s: float) -> float:
    """Start (trace seconds) of the ``length_s`` window holding the most arrivals."""
    return float(trace.at_s[int(np.argmax(_window_counts(trace, length_s)))])


def typical_window(trace: Trace, length_s: float) -> float:
    """Start (trace seconds) of the first ``length_s`` window whose arrivals are nearest the
    hour's mean rate (the trace is bursty at the scale of minutes: 63 requests in its first
    3 minutes, 848 in the next 3)."""
    counts = _window_counts(trace, length_s)
    counts[trace.at_s + length_s > trace.at_s[-1]] = -1  # windows that run past the end
    return float(trace.at_s[int(np.argmin(np.abs(counts - trace.rate_rps * length_s)))])


def window(trace: Trace, homes: Sequence[str | None], start_s: float, length_s: float
           ) -> tuple[Trace, list[str | None]]:
    """The requests of ``[start_s, start_s + length_s)`` (trace seconds) and their homes."""
    keep = (trace.at_s >= start_s) & (trace.at_s < start_s + length_s)
    idx = np.flatnonzero(keep)
    return (Trace(f"{trace.name} [{start_s:.0f}, {start_s + length_s:.0f})",
                  trace.at_s[idx] - start_s, trace.prompt_tokens[idx], trace.output_tokens[idx]),
            [homes[i] for i in idx.tolist()])


def _overloaded(trace: Trace, homes: Sequence[str | None], start_s: float, length_s: float,
                scale: float) -> Replay:
    """The window compressed until it alone offers :data:`OVERLOAD` x the layout's slots."""
    load = overload_factor(*window(trace, homes, start_s, length_s))
    return Replay(f"{OVERLOAD:g}x", load, scale, start_s, length_s)


def replays(trace: Trace, homes: Sequence[str | None], quick: bool) -> list[Replay]:
    """The speeds run, each window's wall time ``length_s x scale / load``. Full:

    * 1x on the trace's busiest :data:`ONE_X_WINDOW_S` at scale 1: the whole hour at 1x would
      take an hour, its busiest part is the hardest 1x case, and at scale 1 the host's delay
      per request counts at its own size (a scale of 0.25 made it 4x larger in model time);
    * 2x on the first :data:`OVERLOAD_WINDOW_S` of the trace at the hour's mean rate
      (:func:`typical_window`), compressed until that window offers 2x the layout's slots, at
      scale 4. Why not the whole hour: compressed 73x, its bursts reach ~400 requests per wall
      second at scale 1, more than one load-generator process and the router stream on this
      2-core host, so the client measured its own lateness (client goodput half the
      schedule's); at scale 4 a fourth of the rate per wall second. The simulator's cases
      (:mod:`benchmarks.experiments.replay_spill_bound`) cover the whole hour.

    Quick: 2x on a 3-minute window of the hour's mean rate at scale 4 (CI).

    The full run adds the issue's scenario: 10x through :data:`DEMO_LAYOUT` on the trace's
    busiest :data:`ISSUE_WINDOW_S` at scale 2. Why that window: at 10x the hour's mean offers
    about a seventh of the slots the 2x overload does, so the refusals the issue describes
    come from the trace's bursts, and the busiest minutes hold the biggest (minutes 3-6);
    scale 2 halves the rate per wall second of those bursts for the same reason as 2x."""
    if quick:
        return [_overloaded(trace, homes, typical_window(trace, 180.0), 180.0, 4.0)]
    return [Replay("1x", 1.0, 1.0, busiest_window(trace, ONE_X_WINDOW_S), ONE_X_WINDOW_S),
            _overloaded(trace, homes, typical_window(trace, OVERLOAD_WINDOW_S),
                        OVERLOAD_WINDOW_S, 4.0),
            Replay(f"{ISSUE_LOAD:g}x", ISSUE_LOAD, 2.0, busiest_window(trace, ISSUE_WINDOW_S),
                   ISSUE_WINDOW_S, DEMO_LAYOUT, issue=True)]


def plan_window(trace: Trace, homes: Sequence[str | None], replay: Replay
                ) -> list[PlannedRequest]:
    """The window's requests that fit a bucket, at wall offsets from the window's start."""
    keep = (trace.at_s >= replay.start_s) & (trace.at_s < replay.start_s + replay.length_s)
    out: list[PlannedRequest] = []
    for i in np.flatnonzero(keep).tolist():
        if homes[i] is None:
            continue
        out.append(PlannedRequest(len(out), (float(trace.at_s[i]) - replay.start_s)
                                  / replay.compression, int(trace.prompt_tokens[i]),
                                  int(trace.output_tokens[i]), homes[i]))
    return out


def _pools(arm: str, scale: float, layout: Layout = LAYOUT) -> list[Pool]:
    arts = artifacts(scale, layout)
    options = {b: {"ttft_slo_s": SLO_PREFILLS * art.prefill_s} for b, art, _ in arts}
    if arm != "off":
        for o in options.values():
            o["spill"] = arm == "spill"
    return [Pool(b, art, r, options[b]) for b, art, r in arts]


def _reader(backends: Mapping[str, list[str]], polls: list[tuple[str, list[Any]]]
            ) -> Callable[[aiohttp.ClientSession], Awaitable[None]]:
    """One read of every emulator's schedule, appended to ``polls`` with its bucket."""
    async def read(session: aiohttp.ClientSession) -> None:
        for bucket, urls in backends.items():
            for url in urls:
                polls.append((bucket, await read_schedule(session, url)))
    return read


def probes(trace: Trace, homes: Sequence[str | None], replay: Replay,
           every_s: float = PROBE_EVERY_S, seed: int = 0) -> list[PlannedRequest]:
    """Probe requests over the replay's window, one every ``every_s`` (model seconds),
    alternating the buckets that are some request's home, each with the prompt length of a
    request of the trace at home there drawn at random (``numpy.random.default_rng(seed)``:
    the router counts and relays prompts of the replay's sizes) and one output token."""
    names = [b for b, _, _ in replay.layout if any(h == b for h in homes)]
    prompts = {b: [p for p, h in zip(trace.prompt_tokens.tolist(), homes, strict=True)
                   if h == b] for b in names}
    rng = np.random.default_rng(seed)
    count = int(replay.length_s / replay.load / every_s) if names else 0
    out = []
    for i in range(count):
        b = names[i % len(names)]
        out.append(PlannedRequest(i, i * every_s * replay.scale, int(rng.choice(prompts[b])),
                                  1, b))
    return out


def probe_delays(records: Sequence[RequestRecord], served: Mapping[str, Sequence[Served]],
                 prefix: str, scale: float) -> list[float]:
    """Model seconds each completed probe spent outside its emulator's schedule: its TTFT at
    the client less its TTFT on the recorded schedule (``prefix`` + index), over the run's
    ``scale``; probes refused or not found on a schedule give none."""
    out = []
    for r in records:
        entries = served.get(f"{prefix}{r.index}")
        if r.outcome == ClientOutcome.COMPLETED and r.ttft_s is not None and entries:
            out.append(round((r.ttft_s - entries[0].ttft_s) / scale, 6))
    return out


async def replay_arm(cfg: SweepConfig, arm: str, replay: Replay,
                     planned: list[PlannedRequest],
                     probe: Sequence[PlannedRequest] = ()) -> ArmRun:
    """Run ``planned`` through router + emulators configured for ``arm``; the figures of
    :func:`replay_figures.arm_figures` are in the result. ``probe`` (:func:`probes`) is sent
    beside it through the same stack; its :func:`probe_delays` are the figures'
    ``probe_delays_s`` (empty without probes); probes are in no other figure."""
    pools = _pools(arm, replay.scale, replay.layout)
    admission = {"mode": "off"} if arm == "off" else {"mode": "timeline"}
    prefix = f"x8-{arm}-{replay.label}-"
    polls: list[tuple[str, list[Any]]] = []
    # Long enough for the longest generation to finish after the last arrival.
    drain = 2 * replay.scale * max(SLO_PREFILLS * a.prefill_s + a.service_time(a.max_output_tokens)
                                   for _, a, _ in artifacts(1.0, replay.layout))
    probe_prefix = f"x8probe-{arm}-{replay.label}-"
    async with serve(cfg, pools, admission) as stack, \
            polling(_reader(stack.backends, polls), _POLL_S):
        load = LoadConfig(stack.url, pools[0].artifact.model, drain_timeout_s=drain,
                          request_id_prefix=prefix)
        probing = asyncio.create_task(run_load(
            probe, replace(load, request_id_prefix=probe_prefix),
            PromptFactory(np.random.default_rng(cfg.seed + 1)))) if probe else None
        try:
            result = await run_load(planned, load,
                                    PromptFactory(np.random.default_rng(cfg.seed)))
        finally:
            probed = await probing if probing is not None else None
    served = replay_figures.merge_schedules(polls)
    run = ArmRun(arm, replay, planned, result.records, served, prefix)
    run.figures = replay_figures.arm_figures(
        planned, result.records, served, prefix=prefix,
        buckets=[b for b, _, _ in replay.layout], slo_s=slo_s(replay.layout), scale=replay.scale,
        window_s=replay.length_s / replay.load,
        slots={b: a.slots * r for b, a, r in artifacts(1.0, replay.layout)})
    run.figures["ended_once_problems"] = replay_figures.ended_once_problems(
        planned, result.records, served, prefix)[:20]
    run.figures["probe_delays_s"] = (probe_delays(probed.records, served, probe_prefix,
                                                  replay.scale) if probed else [])
    return run


def _config(arm: str, scale: float, layout: Layout = LAYOUT) -> RouterConfig:
    """The router config of ``arm`` with placeholder backend URLs (for the planner)."""
    pools = _pools(arm, scale, layout)
    urls = {p.name: [f"http://127.0.0.1:{9100 + 10 * i + j}" for j in range(p.replicas)]
            for i, p in enumerate(pools)}
    admission = {"mode": "off"} if arm == "off" else {"mode": "timeline"}
    return parse_config(router_config(pools, urls, admission), f"<exp8 {arm}>")


def prediction(planned: Sequence[PlannedRequest], replay: Replay, arm: str,
               delays: Sequence[float] = ()) -> dict[str, Any]:
    """The planner's figures for ``arm`` on the very arrivals of ``planned``: its simulator
    (:func:`benchmarks.plan_replay.replay`, the router's admission code on a virtual clock) on
    the model-time trace of the run, each request reaching its backend one of ``delays``
    (model seconds: the arm's :func:`probe_delays`; empty: none) after its decision. Goodput
    per model-time second of the replayed window, as measured."""
    trace = Trace(f"exp8 {replay.label}",
                  np.asarray([p.at_s / replay.scale for p in planned], dtype=np.float64),
                  np.asarray([p.prompt_tokens for p in planned], dtype=np.int64),
                  np.asarray([p.max_tokens for p in planned], dtype=np.int64))
    pred = plan_replay.replay(_config(arm, 1.0, replay.layout), trace,
                              margin=ESTIMATE_UNDERCOUNT_MARGIN, dispatch_sample=delays)
    window = replay.length_s / replay.load
    return {"arm": arm, "delays": len(delays),
            "delay_p50_s": float(np.percentile(delays, 50)) if len(delays) else None,
            "delay_p99_s": float(np.percentile(delays, 99)) if len(delays) else None,
            "goodput_rps": pred.good / window, "p99_ttft_s": pred.p99_ttft_s,
            "refused": pred.refused, "violations": pred.violations,
            "spills": sum(b.spilled_out for b in pred.buckets),
            "buckets": {b.name: {"goodput_rps": b.good / window, "p99_ttft_s": b.p99_ttft_s,
                                 "refused": sum(b.refused.values()), "spilled_out": b.spilled_out,
                                 "utilization": b.utilization} for b in pred.buckets}}


def claims(data: Mapping[str, Any]) -> list[Claim]:
    return replay_report.claims(data)


def summarize(data: Mapping[str, Any]) -> str:
    return replay_report.summarize(data)


def _issue_note(rep: Mapping[str, Any], trace_s: float) -> str:
    """How the issue's scenario differs from the other speeds (for the intro); ``trace_s``:
    the whole trace's length."""
    layout = ", ".join(f"{b} = {a} x{r} (TTFT SLO {rep['slo_s'][b] * 1e3:.0f} ms)"
                       for b, a, r in rep["layout"])
    return (f", the issue's own scenario: the demo's layout {layout}, on the trace's busiest"
            f" {rep['length_s'] / 60:.0f} minutes (the whole trace at {rep['load']:g}x would"
            f" take {trace_s * rep['scale'] / rep['load']:.0f} s per arm; the refusals come from"
            " the trace's bursts, and these minutes hold its biggest)")


async def run(cfg: SweepConfig, out_dir: Path, quick: bool) -> ExperimentResult:
    t0 = time.perf_counter()
    trace = read_trace(TRACE, "azure")
    homes = home_buckets(trace)
    reps: list[dict[str, Any]] = []
    for replay in replays(trace, homes, quick):
        own = homes if replay.layout == LAYOUT else home_buckets(trace, replay.layout)
        planned = plan_window(trace, own, replay)
        probe = probes(trace, own, replay)
        arms = {arm: (await replay_arm(cfg, arm, replay, planned,
                                       probe if arm != "off" else ())).figures
                for arm in ARMS}
        reps.append({"label": replay.label, "load": replay.load, "scale": replay.scale,
                     "start_s": replay.start_s, "length_s": replay.length_s,
                     "layout": [list(x) for x in replay.layout], "issue_scenario": replay.issue,
                     "slo_s": slo_s(replay.layout), "requests": len(planned), "arms": arms,
                     "prediction": prediction(planned, replay, "spill",
                                              arms["spill"]["probe_delays_s"]),
                     "prediction_no_spill": prediction(planned, replay, "no_spill",
                                                       arms["no_spill"]["probe_delays_s"])})
    unplaced = sum(h is None for h in homes)
    slos = slo_s()
    data = {"config": {"layout": [list(x) for x in LAYOUT], "slo_s": slos,
                       "slo_prefills": SLO_PREFILLS, "overload": OVERLOAD,
                       "trace": TRACE.name, "trace_requests": len(trace),
                       "trace_duration_s": trace.duration_s, "unplaced": unplaced,
                       "citation": CITATION, "isolate": cfg.isolate, "quick": quick},
            "replays": reps, "points": replay_report.points(reps)}
    if not quick:
        data["spill_bound"] = replay_spill_bound.spill_bound(trace, OVERLOAD,
                                                             ESTIMATE_UNDERCOUNT_MARGIN)
    speeds = "; ".join(
        f"{r['label']}: trace seconds {r['start_s']:.0f} to {r['start_s'] + r['length_s']:.0f}"
        f" ({r['requests']} requests) at {r['load']:.1f}x the trace's rate, artifact durations"
        f" x{r['scale']:g}, so {r['length_s'] * r['scale'] / r['load']:.0f} s of wall time"
        + (_issue_note(r, trace.duration_s) if r["issue_scenario"] else "")
        for r in reps)
    intro = (
        f"Replay of the {CITATION} ({len(trace)} requests over {trace.duration_s / 60:.0f}"
        " minutes) through the router and the emulators, each request with the trace's prompt"
        " length and its output length as a fixed output. Layout: "
        + ", ".join(f"{b} = {a} x{r} (TTFT SLO {slos[b] * 1e3:.0f} ms)" for b, a, r in LAYOUT)
        + f"; {unplaced} requests fit no bucket and are left out. Speeds: {speeds}. Arms on the"
        " same arrivals: timeline with spill, timeline without spill (per bucket `spill ="
        " false`), admission off. Figures in the artifacts' own time; a request's SLO is its"
        " home (smallest fitting) bucket's, wherever it ran."
    )
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=replay_report.table(data),
                            summary=summarize(data), figure=replay_report.plot(data), data=data,
                            elapsed_s=time.perf_counter() - t0)
