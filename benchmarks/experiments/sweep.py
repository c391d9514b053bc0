"""``lpu-bench sweep``: run the experiments and write their index.

    lpu-bench sweep                          # all seven, full length (~20 min on 2 cores)
    lpu-bench sweep --only 1,2 --quick       # a smoke run (CI): short, in one process
    lpu-bench sweep --index-only             # rebuild README.md from the JSON files

Each experiment writes ``<name>.md``, ``<name>.png`` and ``<name>.json`` into ``--out``;
the index ``README.md`` there is rebuilt from every ``exp*.json`` present (so ``--only``
refreshes some experiments and keeps the others). Process arrangement: by default the full
run puts the emulators and the router each in their own process and the load generator in
this one (``--in-process`` puts all three in one event loop; ``--quick`` does so unless
``--isolate`` is given).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.experiments import (
    ExperimentResult,
    SweepConfig,
    exp1_queueing,
    exp2_admission,
    exp3_rejection,
    exp4_burstiness,
    exp5_batching,
    exp6_step,
    exp7_hol,
)
from benchmarks.experiments.output import machine

__all__ = ["EXPERIMENTS", "HELP", "configure", "execute", "run_sweep", "write_index"]

HELP = "run the queueing and admission experiments; write tables, plots and an index"
EXPERIMENTS: tuple[ModuleType, ...] = (exp1_queueing, exp2_admission, exp3_rejection,
                                       exp4_burstiness, exp5_batching, exp6_step, exp7_hol)
DEFAULT_OUT = Path("benchmarks/results")

_INTERPRETATION = """\
What this means for a deployment:

- **The queueing is the M/D/c queue** (experiment 1): through the router, the measured p50
  and p99 match the exact FIFO schedule of the same arrivals to within 3-7 ms (the proxy,
  loopback and client; 12-15 ms at 200 req/s, where the two cores saturate), and the
  stationary M/D/c curve wherever a run is long enough to reach it (at rho >= 0.9 a run of
  seconds that starts empty stays below it). M/M/c, the GPU-era rule of thumb, overstates
  the p99 TTFT 1.6 to 2.3 times here. So a deterministic backend's TTFT can be planned
  from the arrival rate, the slot count and the compiled service time (`lpu-bench plan`).
- **Past capacity, some admission control is not optional** (experiments 2, 3 and 6):
  without it every request is accepted and, from rho = 1 on, nearly all miss the SLO -
  goodput collapses and the backlog outlives the overload. Refusing at the door keeps
  goodput near capacity and recovers the moment the overload ends. The timeline rule's
  refusal rate is predicted by the same model (M/D/c with balking). With one fixed output
  length a concurrency cap tuned to that service time does as well; the timeline rule
  gets there without tuning (it reads the schedule, so it holds when lengths, shapes or
  SLOs differ). With variable output lengths (experiment 2, second table) a cap tuned to
  the mean length lets some admitted requests miss the SLO and one tuned to the worst case
  gives up about a quarter of the goodput; the timeline rule with learned lengths keeps
  the SLO at the mean-tuned cap's goodput. Its margin (adaptive: the 99th percentile of
  the delay the router sees after its decision, at least `margin_s`) stayed near its 5 ms
  floor here; the few misses left come from delay outside the router's view (the client
  and the router's event loop before the decision, on this shared 2-core machine).
- **Do not batch in front of it, and split shapes** (experiments 5 and 7): a batching window
  only adds delay on a fixed-schedule backend, and a pool compiled at the long shape makes
  every short prompt pay the long prefill - give each shape its own bucket.
- **Burstiness, not utilization alone, sets the tail** (experiment 4): size for the
  observed burstiness of the traffic.
"""


def _parse_only(spec: str | None) -> list[ModuleType]:
    if not spec:
        return list(EXPERIMENTS)
    picked: list[ModuleType] = []
    for part in spec.split(","):
        try:
            k = int(part.strip())
        except ValueError:
            raise ValueError(f"--only: expected numbers like 1,2,5, got {spec!r}") from None
        if not 1 <= k <= len(EXPERIMENTS):
            raise ValueError(f"--only: experiments are numbered 1 to {len(EXPERIMENTS)}")
        picked.append(EXPERIMENTS[k - 1])
    return picked


async def run_sweep(cfg: SweepConfig, out_dir: Path, quick: bool,
                    modules: Sequence[ModuleType] = EXPERIMENTS) -> list[ExperimentResult]:
    """Run ``modules`` in order into ``out_dir``; return the results of those that finished.

    An experiment that fails is reported on stderr and the sweep goes on with the next one
    (rerun it with ``--only``); the caller compares the counts.
    """
    results: list[ExperimentResult] = []
    for mod in modules:
        t0 = time.perf_counter()
        print(f"lpu-bench sweep: {mod.TITLE} ...", file=sys.stderr, flush=True)
        try:
            result: ExperimentResult = await mod.run(cfg, out_dir, quick)
        except Exception:
            print(f"lpu-bench sweep: {mod.NAME} FAILED:\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)
            continue
        print(f"lpu-bench sweep:   done in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)
        results.append(result)
    return results


def write_index(out_dir: Path, command: str) -> Path:
    """(Re)write ``out_dir/README.md`` from every experiment JSON found there."""
    docs: list[dict[str, Any]] = []
    for mod in EXPERIMENTS:
        path = out_dir / f"{mod.NAME}.json"
        if path.is_file():
            docs.append(json.loads(path.read_text("utf-8")))
    m = machine() if not docs else docs[0]["machine"]
    total = sum(float(d.get("elapsed_s") or 0.0) for d in docs)
    isolated = all(d.get("config", {}).get("isolate", False) for d in docs)
    lines = [
        "# Benchmark results: queueing and admission experiments",
        "",
        f"Produced by `{command}` (`benchmarks/experiments/`); every figure below is from that"
        " run. Machine: "
        f"{m['nproc']} cores, {m['cpu']}, Python {m['python']}, {m['platform']};"
        f" {m['date']}; {total / 60:.1f} minutes of experiments.",
        "",
        ("Processes: each emulator pool and the router ran in their own process, the load"
         " generator in a third (all sharing the cores)." if isolated else
         "Processes: emulators, router and load generator shared one event loop.")
        + " Latencies are measured at the client from each request's *intended* send time"
        " (open loop, no coordinated omission); TTFT = queueing wait + prefill + proxy and"
        " loopback overhead.",
        "",
        _INTERPRETATION,
    ]
    heads = [d for d in docs if d["name"] in (exp1_queueing.NAME, exp2_admission.NAME,
                                                  exp6_step.NAME)]
    if heads:
        lines += ["## Headline plots", ""]
        lines += [f"![{d['title']}]({d['plots'][0]})" for d in heads]
        lines.append("")
    for d in docs:
        lines += [f"## {d['title']}", "", d["summary"], "", d["table_md"],
                  f"Plot: [{d['plots'][0]}]({d['plots'][0]}) - table: [{d['name']}.md]"
                  f"({d['name']}.md) - numbers: [{d['name']}.json]({d['name']}.json)", ""]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines), "utf-8")
    return path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", default=None, help="experiment numbers to run, e.g. 1,2")
    p.add_argument("--quick", action="store_true",
                   help="a short smoke run (CI): tiny sweeps, everything in one process")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default {DEFAULT_OUT}; with --quick a temp folder)")
    p.add_argument("--seed", type=int, default=1)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--isolate", action="store_true", default=None,
                       help="emulators and router in their own processes (full-run default)")
    where.add_argument("--in-process", dest="isolate", action="store_false",
                       help="emulators, router and load generator in one event loop")
    p.add_argument("--index-only", action="store_true",
                   help="only rebuild README.md from the JSON files in --out")


def _run(coro: Coroutine[Any, Any, list[ExperimentResult]]) -> list[ExperimentResult]:
    from benchmarks.run_command import run_async

    return run_async(coro)


def execute(args: argparse.Namespace) -> int:
    try:
        modules = _parse_only(args.only)
    except ValueError as exc:
        print(f"lpu-bench sweep: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out or (Path(tempfile.gettempdir()) / "lpu-sweep-quick" if args.quick
                             else DEFAULT_OUT)
    command = "lpu-bench sweep" + (" --quick" if args.quick else "") + (
        f" --only {args.only}" if args.only else "")
    if not args.index_only:
        isolate = (not args.quick) if args.isolate is None else bool(args.isolate)
        cfg = replace(SweepConfig(), seed=args.seed, isolate=isolate)
        out.mkdir(parents=True, exist_ok=True)
        results = _run(run_sweep(cfg, out, args.quick, modules))
        for r in results:
            print(f"\n## {r.title}\n\n{r.table_md}\n{r.summary}")
    index = write_index(out, command)
    print(f"\nresults in {out} (index: {index})")
    if not args.index_only and len(results) < len(modules):
        print(f"lpu-bench sweep: {len(modules) - len(results)} experiment(s) failed",
              file=sys.stderr)
        return 1
    return 0
