"""``lpu-bench sweep``: run the experiments and write their index.

    lpu-bench sweep                          # all eight, full length (~45 min on 2 cores)
    lpu-bench sweep --only 1,2 --quick       # a smoke run (CI): short, in one process
    lpu-bench sweep --index-only             # rebuild the prose and README.md from the JSON
    lpu-bench sweep --only 1 --check         # the M/D/c check: exit 1 unless every claim holds

Each experiment writes ``<name>.md``, ``<name>.png`` and ``<name>.json`` into ``--out``;
the index ``README.md`` there is rebuilt from every ``exp*.json`` present (so ``--only``
refreshes some experiments and keeps the others). Process arrangement: by default the full
run puts the emulators and the router each in their own process and the load generator in
this one (``--in-process`` puts all three in one event loop; ``--quick`` does so unless
``--isolate`` is given).

``--check`` turns the run into a check: after the run (or, with ``--index-only``, on the
results already in ``--out``) every claim of the selected experiments is evaluated on their
JSON numbers, those that do not hold are printed, and the exit status is 1 if there is one.
Measured latencies against theory belong here and not in the test suite, because a busy
2-core machine can miss them; a quick run is too short for most claims to hold.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
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
    exp8_trace_replay,
    variable_lengths,
)
from benchmarks.experiments.claims import Claim, sentences
from benchmarks.experiments.output import machine

__all__ = ["EXPERIMENTS", "HELP", "configure", "execute", "interpretation", "load_docs",
           "refresh_prose", "run_sweep", "unmet_claims", "write_index"]

HELP = "run the queueing and admission experiments; write tables, plots and an index"
EXPERIMENTS: tuple[ModuleType, ...] = (exp1_queueing, exp2_admission, exp3_rejection,
                                       exp4_burstiness, exp5_batching, exp6_step, exp7_hol,
                                       exp8_trace_replay)
DEFAULT_OUT = Path("benchmarks/results")

Docs = Mapping[str, Mapping[str, Any]]
"""Experiment name -> the mapping in its ``<name>.json``."""


def _claims_of(*modules: ModuleType) -> Callable[[Docs], list[Claim]]:
    def claims(docs: Docs) -> list[Claim]:
        return [c for m in modules if m.NAME in docs for c in m.claims(docs[m.NAME])]
    return claims


def _length_claims(docs: Docs) -> list[Claim]:
    doc = docs.get(exp2_admission.NAME)
    points = list(doc.get("length_points") or []) if doc else []
    return variable_lengths.claims(points) if points else []


_BULLETS: tuple[tuple[str, Callable[[Docs], list[Claim]]], ...] = (
    ("Queueing against the M/D/c model (experiment 1)", _claims_of(exp1_queueing)),
    ("Admission control past capacity (experiments 2, 3 and 6)",
     _claims_of(exp2_admission, exp3_rejection, exp6_step)),
    ("Variable output lengths (experiment 2, second table)", _length_claims),
    ("Batching windows and compiled shapes (experiments 5 and 7)",
     _claims_of(exp5_batching, exp7_hol)),
    ("Burstiness (experiment 4)", _claims_of(exp4_burstiness)),
    ("Spill on a real trace (experiment 8)", _claims_of(exp8_trace_replay)),
)


def interpretation(docs: Docs) -> str:
    """What the run shows for a deployment: one bullet per theme, every sentence a
    :class:`~benchmarks.experiments.claims.Claim` checked against the experiments' own
    numbers. Themes with no experiment in ``docs`` are left out; ``""`` when none is left."""
    bullets = [f"- **{heading}**: {sentences(found)}"
               for heading, claims in _BULLETS if (found := claims(docs))]
    if not bullets:
        return ""
    return ("What this run shows for a deployment (each sentence checked against the"
            " figures below):\n\n" + "\n".join(bullets) + "\n")


def unmet_claims(docs: Docs) -> list[Claim]:
    """Every claim of the experiments in ``docs`` that their own numbers do not support
    (the claims :func:`interpretation` states, in its order)."""
    return [c for _, claims in _BULLETS for c in claims(docs) if not c.holds]


def load_docs(out_dir: Path, modules: Sequence[ModuleType] = EXPERIMENTS) -> dict[str, Any]:
    """Experiment name -> its ``<name>.json`` in ``out_dir``, for those of ``modules`` that
    have one."""
    docs: dict[str, Any] = {}
    for mod in modules:
        path = out_dir / f"{mod.NAME}.json"
        if path.is_file():
            docs[mod.NAME] = json.loads(path.read_text("utf-8"))
    return docs


def _check(out_dir: Path, modules: Sequence[ModuleType]) -> int:
    """``--check``: 0 when every claim of ``modules`` holds on the results in ``out_dir``."""
    docs = load_docs(out_dir, modules)
    absent = [m.NAME for m in modules if m.NAME not in docs]
    unmet = unmet_claims(docs)
    for name in absent:
        print(f"lpu-bench sweep --check: {name}: no results in {out_dir}", file=sys.stderr)
    for claim in unmet:
        print(f"lpu-bench sweep --check: {claim.sentence()}", file=sys.stderr)
    total = sum(len(claims(docs)) for _, claims in _BULLETS)
    print(f"lpu-bench sweep --check: {total - len(unmet)} of {total} claims hold"
          + (f", {len(absent)} experiment(s) without results" if absent else ""),
          file=sys.stderr)
    return 1 if unmet or absent else 0


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


_BY_NAME: dict[str, ModuleType] = {m.NAME: m for m in EXPERIMENTS}


def _summary(doc: Mapping[str, Any]) -> str:
    """The summary computed from ``doc``'s numbers by its experiment's ``summarize``."""
    mod = _BY_NAME.get(str(doc.get("name")))
    return str(doc.get("summary", "")) if mod is None else str(mod.summarize(doc))


def refresh_prose(out_dir: Path) -> list[str]:
    """Recompute every experiment's summary in ``out_dir`` from its JSON numbers and write it
    into ``<name>.json`` and ``<name>.md`` (whose intro, table and plot stay as they are).
    Returns the names whose summary changed."""
    changed: list[str] = []
    for mod in EXPERIMENTS:
        path = out_dir / f"{mod.NAME}.json"
        if not path.is_file():
            continue
        doc = json.loads(path.read_text("utf-8"))
        new, old = _summary(doc), str(doc.get("summary", ""))
        if new == old:
            continue
        doc["summary"] = new
        path.write_text(json.dumps(doc, indent=1) + "\n", "utf-8")
        md = out_dir / f"{mod.NAME}.md"
        if md.is_file() and old:
            md.write_text(md.read_text("utf-8").replace(f"\n{old}\n", f"\n{new}\n", 1), "utf-8")
        changed.append(mod.NAME)
    return changed


def write_index(out_dir: Path, command: str) -> Path:
    """(Re)write ``out_dir/README.md`` from every experiment JSON found there."""
    docs: list[dict[str, Any]] = list(load_docs(out_dir).values())
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
        interpretation({d["name"]: d for d in docs}),
    ]
    heads = [d for d in docs if d["name"] in (exp1_queueing.NAME, exp2_admission.NAME,
                                                  exp6_step.NAME)]
    if heads:
        lines += ["## Headline plots", ""]
        lines += [f"![{d['title']}]({d['plots'][0]})" for d in heads]
        lines.append("")
    for d in docs:
        lines += [f"## {d['title']}", "", _summary(d), "", d["table_md"],
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
                   help="only recompute the summaries and README.md from the JSON files in --out")
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless every claim of the selected experiments holds on their"
                   " results (with --index-only: on those already in --out)")


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
    if args.index_only:
        for name in refresh_prose(out):
            print(f"lpu-bench sweep: {name}: summary recomputed from its numbers",
                  file=sys.stderr)
    index = write_index(out, command)
    print(f"\nresults in {out} (index: {index})")
    if not args.index_only and len(results) < len(modules):
        print(f"lpu-bench sweep: {len(modules) - len(results)} experiment(s) failed",
              file=sys.stderr)
        return 1
    return _check(out, modules) if args.check else 0
