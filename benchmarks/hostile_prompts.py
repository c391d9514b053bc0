"""``lpu-bench hostile-prompts``: normal streams while clients send 4 MB prompts in a loop.

Example::

    lpu-bench hostile-prompts --rate 20 --duration 20 --rounds 2 --out-dir benchmarks/results

Setup, each in its own process: the emulator (``lpu-emulator``, ``--replicas`` backends of
``llama-3.1-8b-2k``, exactly ``max_tokens`` per answer), the router (``lpu-router serve``,
admission ``timeline``) and, in the attacked runs, the attackers (this module with
``--attacker URL``): ``--attackers`` loops, each sending a ``--attack-mb`` MB chat prompt of
prose, reading the answer (400 ``context_length_exceeded``: the prompt fits no shape) and
sending the next one at once. The normal load is the project's open-loop generator
(:mod:`benchmarks.loadgen`) here: Poisson arrivals at ``--rate``, streaming chat requests of
``--prompt-tokens`` and ``--max-tokens``.

Each round runs the same planned load three times (a busy spell of a shared machine hits all
alike): ``baseline`` without attackers; ``control`` with the same attackers sending to a sink in
its own process (reads the body, answers 400), which shows what the attack traffic costs the
machine itself (the attackers share its cores); ``attacked`` with the attackers sending to the
router. ``attacked - control`` is then what the router adds. Reported per run and pooled per
condition: p50/p99 TTFT,
the longest inter-token gap of any stream and the p99 of each stream's longest gap, errors, the
attackers' requests and answers, and whether a replica was ever marked down (``/metrics``
polled every 0.5 s). The verdict compares the pooled figures: the issue's target is that p99
TTFT and the longest inter-token gap stay within 10 ms of the run without attackers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.arrivals import poisson_times
from benchmarks.loadgen import LoadConfig, run_load
from benchmarks.machine import describe
from benchmarks.processes import Service, cpu_seconds, start, url_in
from benchmarks.prompts import PromptFactory
from benchmarks.records import ClientOutcome, RequestRecord
from benchmarks.run_command import run_async
from benchmarks.workload import PlannedRequest

__all__ = ["HELP", "configure", "execute", "verdict"]

HELP = "normal streams while clients send 4 MB prompts in a loop (issue 10, defect 2)"
MODEL = "llama-3.1-8b-instant"
ARTIFACT = "llama-3.1-8b-2k"
CONDITIONS = ("baseline", "control", "attacked")
TARGET_MS = 10.0
"""The issue's bound on how much the attackers may add to p99 TTFT and the longest gap."""
ATTACKER_NICE = 19
"""The attackers stand for other machines: on a shared 2-core box their own sending must not
take the CPU the router under test needs, so they run at the lowest priority."""
_SENTENCE = "Tell me something about the weather today. "
_START_S = 30.0


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=20.0, help="normal requests per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of normal load per run")
    p.add_argument("--rounds", type=int, default=2, help="baseline + attacked pairs")
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="emulated durations multiplied by this")
    p.add_argument("--attackers", type=int, default=2, help="attacker loops")
    p.add_argument("--attack-mb", type=float, default=4.0, help="size of each attack prompt")
    p.add_argument("--attack-interval", type=float, default=0.0,
                   help="seconds between the starts of one loop's requests (0: back to back;"
                        " the issue measured ~0.67 s before the fix)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out-dir", type=Path, default=None,
                   help="write NAME.json and NAME.md here")
    p.add_argument("--name", default="hostile_prompts", help="file name of the results")
    p.add_argument("--label", default="", help="what code was measured (shown in the results)")


# -- processes (benchmarks.processes; started and stopped in a thread, the loop stays free) ---

@contextlib.asynccontextmanager
async def _service(cmd: list[str], name: str, ready_lines: int) -> AsyncIterator[Service]:
    service = await asyncio.to_thread(start, cmd, name=name, ready_lines=ready_lines,
                                      timeout_s=_START_S)
    try:
        yield service
    finally:
        await asyncio.to_thread(service.stop)


@contextlib.asynccontextmanager
async def _emulators(replicas: int, time_scale: float, seed: int) -> AsyncIterator[list[str]]:
    async with _service([sys.executable, "-m", "lpu_emulator", "--artifact", ARTIFACT,
                         "--port", "0", "--replicas", str(replicas), "--time-scale",
                         str(time_scale), "--output-length", "fixed", "--seed", str(seed)],
                        "emulator", replicas) as emulator:
        yield [url_in(line) for line in emulator.lines]


@contextlib.asynccontextmanager
async def _router(backends: list[str], time_scale: float) -> AsyncIterator[tuple[str, int]]:
    """The router process; yields (base URL, pid)."""
    urls = ", ".join(f'"{u}"' for u in backends)
    config = (f'[server]\nhost = "127.0.0.1"\nport = 0\n[admission]\nmode = "timeline"\n'
              f'[[buckets]]\nname = "short"\nmodel = "{MODEL}"\nartifact = "{ARTIFACT}"\n'
              f"time_scale = {time_scale}\nbackends = [{urls}]\nttft_slo_s = 2.0\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "router.toml"
        path.write_text(config)
        async with _service([sys.executable, "-m", "router", "--log-level", "WARNING", "serve",
                             str(path)], "router", 1) as router:
            (line,) = router.lines
            if not line.startswith("lpu-router serving on "):
                raise RuntimeError(f"the router did not start: {line!r}")
            yield url_in(line), router.pid


# -- the attacker process --------------------------------------------------------------------

def attack_body(mb: float) -> bytes:
    """A chat body whose prompt is ``mb`` MB of prose (it fits no compiled shape)."""
    text = _SENTENCE * int(mb * 1e6 / len(_SENTENCE))
    return json.dumps({"model": MODEL, "max_tokens": 16,
                       "messages": [{"role": "user", "content": text}]}).encode()


async def _attack(url: str, loops: int, mb: float, interval: float) -> None:
    """Send until SIGTERM (each loop starts a request every ``interval`` s at most), then print
    the answers' tally as one JSON line."""
    body = attack_body(mb)
    answers: Counter[str] = Counter()

    async def loop(session: aiohttp.ClientSession) -> None:
        clock = asyncio.get_running_loop().time
        while True:
            next_at = clock() + interval
            try:
                async with session.post(url + "/v1/chat/completions", data=io.BytesIO(body),
                                        headers={"Content-Type": "application/json"}) as r:
                    data = await r.read()
                    code = "" if r.status == 200 else str(json.loads(data)["error"]["code"])
                    answers[f"{r.status} {code}".strip()] += 1
            except (aiohttp.ClientError, ValueError, KeyError) as exc:
                answers[type(exc).__name__] += 1
            await asyncio.sleep(max(0.0, next_at - clock()))

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(loop(session)) for _ in range(loops)]
        print("ready", flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(answers), flush=True)


# -- one run ---------------------------------------------------------------------------------

def _plan(rate: float, duration: float, prompt_tokens: int, max_tokens: int,
          seed: int) -> list[PlannedRequest]:
    times = poisson_times(rate, duration, np.random.default_rng(seed))
    return [PlannedRequest(i, float(t), prompt_tokens, max_tokens) for i, t in enumerate(times)]


async def _replicas_down(url: str, stop: asyncio.Event) -> int:
    """Polls of ``/metrics`` (every 0.5 s) that found a replica marked down."""
    down = 0
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with s.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    text = await r.text()
                if any(sample.value == 0 for fam in text_string_to_metric_families(text)
                       for sample in fam.samples if sample.name == "lpu_router_backend_up"):
                    down += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    return down


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 2)


def run_figures(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """TTFT and gap figures of the normal load's records (milliseconds)."""
    done = [r for r in records if r.outcome == ClientOutcome.COMPLETED.value]
    ttft = [r.ttft_s for r in done if r.ttft_s is not None]
    gaps = [r.itl_max_s for r in done if r.itl_max_s is not None]

    def q(values: list[float], p: float) -> float | None:
        return _ms(float(np.quantile(values, p))) if values else None

    return {"requests": len(records), "completed": len(done),
            "errors": len(records) - len(done),
            "ttft_p50_ms": q(ttft, 0.5), "ttft_p99_ms": q(ttft, 0.99),
            "longest_gap_ms": _ms(max(gaps)) if gaps else None,
            "stream_longest_gap_p99_ms": q(gaps, 0.99)}


async def _one_run(url: str, planned: list[PlannedRequest], seed: int, target: str | None,
                   attack: tuple[int, float, float]) -> tuple[list[RequestRecord], int,
                                                              dict[str, int]]:
    """The planned load against ``url``; the attackers against ``target`` (None: none)."""
    stop = asyncio.Event()
    poller = asyncio.create_task(_replicas_down(url, stop))
    answers: dict[str, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        if target is not None:
            await stack.enter_async_context(_attack_process(target, *attack, answers))
        result = await run_load(planned, LoadConfig(url, MODEL),
                                PromptFactory(np.random.default_rng(seed)))
    stop.set()
    return result.records, await poller, answers


@contextlib.asynccontextmanager
async def _attack_process(url: str, loops: int, mb: float, interval: float,
                          answers: dict[str, int]) -> AsyncIterator[None]:
    """The attackers in their own process while the block runs; ``answers`` gets their tally."""
    # Ready when it printed "ready": the body is built, the loops are sending.
    attacker = await asyncio.to_thread(
        start, [sys.executable, "-m", "benchmarks.hostile_prompts", "--attacker", url,
                "--loops", str(loops), "--attack-mb", str(mb), "--interval", str(interval),
                "--nice", str(ATTACKER_NICE)], name="attacker", ready_lines=1,
        timeout_s=_START_S)
    try:
        await asyncio.sleep(1.0)  # steady state before the load starts
        yield
    finally:
        tail = [line for line in await asyncio.to_thread(attacker.stop) if line.strip()]
        if tail:
            answers.update(json.loads(tail[-1]))


@contextlib.asynccontextmanager
async def _sink_process() -> AsyncIterator[str]:
    """The control's sink in its own process; yields its base URL."""
    async with _service([sys.executable, "-m", "benchmarks.hostile_prompts", "--sink"], "sink",
                        1) as sink:
        yield url_in(sink.lines[0])


async def _sink() -> None:
    """Read each body whole and answer 400, as the router does a prompt that fits no shape."""
    error = {"error": {"message": "sink", "type": "invalid_request_error", "param": None,
                       "code": "context_length_exceeded"}}

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(error, status=400)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    print(f"sink serving on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# -- the benchmark ---------------------------------------------------------------------------

_FIGURES = ("ttft_p99_ms", "longest_gap_ms", "stream_longest_gap_p99_ms")


def _added(hit: dict[str, Any], ref: dict[str, Any]) -> dict[str, float | None]:
    return {key: None if hit.get(key) is None or ref.get(key) is None
            else round(hit[key] - ref[key], 2) for key in _FIGURES}


def verdict(base: dict[str, Any], attacked: dict[str, Any],
            control: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the attackers added to each figure (ms) against the baseline, whether the target
    holds, and (with a control) what the router added beyond the attack traffic itself."""
    added = _added(attacked, base)
    out: dict[str, Any] = {"target_ms": TARGET_MS, "added": added}
    both = [added["ttft_p99_ms"], added["longest_gap_ms"]]
    out["within_target"] = None if None in both else all(
        v is not None and v <= TARGET_MS for v in both)
    if control is not None:
        out["machine_added"] = _added(control, base)
        out["router_added"] = _added(attacked, control)
    return out


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    pooled: dict[str, list[RequestRecord]] = {c: [] for c in CONDITIONS}
    attack = (args.attackers, args.attack_mb, args.attack_interval)
    async with _emulators(args.replicas, args.time_scale, args.seed) as backends, \
            _router(backends, args.time_scale) as (url, pid), _sink_process() as sink:
        await asyncio.sleep(1.0)  # first health probes and load polls
        targets = {"baseline": None, "control": sink, "attacked": url}
        for round_ in range(args.rounds):
            planned = _plan(args.rate, args.duration, args.prompt_tokens, args.max_tokens,
                            args.seed + round_)
            for condition in CONDITIONS:
                started, cpu = time.monotonic(), cpu_seconds(pid)
                records, down, answers = await _one_run(url, planned, args.seed + round_,
                                                        targets[condition], attack)
                elapsed = time.monotonic() - started
                busy = (cpu_seconds(pid) - cpu) / elapsed
                pooled[condition] += records
                fig = {"round": round_, "condition": condition, **run_figures(records),
                       "replica_down_polls": down, "router_cpu_percent": round(busy * 100, 1),
                       "attack_answers": answers,
                       "attack_requests_per_s": round(sum(answers.values()) / elapsed, 2)}
                runs.append(fig)
                print(json.dumps(fig), flush=True)
    summary = {c: run_figures(rs) for c, rs in pooled.items()}
    return {"machine": describe(), "label": args.label, "settings": {
        "rate_per_s": args.rate, "duration_s": args.duration, "rounds": args.rounds,
        "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
        "replicas": args.replicas, "time_scale": args.time_scale, "attackers": args.attackers,
        "attack_bytes": len(attack_body(args.attack_mb)),
        "attack_interval_s": args.attack_interval, "attacker_nice": ATTACKER_NICE,
        "artifact": ARTIFACT},
        "runs": runs, "pooled": summary,
        "verdict": verdict(summary["baseline"], summary["attacked"], summary["control"])}


def markdown(doc: dict[str, Any]) -> str:
    """The result as a page; every sentence is computed from ``doc``."""
    s, m, v = doc["settings"], doc["machine"], doc["verdict"]
    lines = [
        "# Normal streams while clients send 4 MB prompts in a loop",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, {m['platform']},"
        f" {m['date']}." + (f" Code: {doc['label']}." if doc.get("label") else ""),
        "",
        f"Load: Poisson {s['rate_per_s']} req/s for {s['duration_s']} s per run, streaming chat,"
        f" {s['prompt_tokens']} prompt tokens, {s['max_tokens']} output tokens, {s['replicas']}"
        f" emulated replicas of {s['artifact']} at time scale {s['time_scale']}; attacked runs add"
        f" {s['attackers']} attacker loops of {s['attack_bytes']:,}-byte prompts"
        + (" sent back to back" if not s["attack_interval_s"] else
           f", each starting one every {s['attack_interval_s']} s at most")
        + f" (attacker process at nice {s['attacker_nice']}). {s['rounds']} rounds, each the"
        " same planned load three times: without attackers (baseline), with the attackers"
        " sending to a sink process instead of the router (control: the attack traffic's cost"
        " to the machine), and with the attackers sending to the router (attacked).",
        "",
        "| run | condition | completed | errors | TTFT p50 ms | TTFT p99 ms | longest gap ms"
        " | p99 stream's longest gap ms | replica-down polls | router CPU % of a core"
        " | attack answers | attacks/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        answers = ", ".join(f"{k}: {n}" for k, n in sorted(r["attack_answers"].items())) or "-"
        lines.append(
            f"| {r['round']} | {r['condition']} | {r['completed']}/{r['requests']} |"
            f" {r['errors']} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | {r['longest_gap_ms']}"
            f" | {r['stream_longest_gap_p99_ms']} | {r['replica_down_polls']} |"
            f" {r['router_cpu_percent']} | {answers} |"
            f" {r['attack_requests_per_s']} |")
    lines += ["", "Pooled over the rounds:", "",
              "| condition | TTFT p99 ms | longest gap ms | p99 stream's longest gap ms |",
              "|---|---|---|---|"]
    for name, fig in doc["pooled"].items():
        lines.append(f"| {name} | {fig['ttft_p99_ms']} | {fig['longest_gap_ms']} |"
                     f" {fig['stream_longest_gap_p99_ms']} |")
    lines.append("")
    if v["within_target"] is None:
        lines.append("Not shown by this run: a condition completed no stream.")
    else:
        holds = "holds" if v["within_target"] else "does not hold"
        added = v["added"]
        lines.append(
            f"The attackers added {added['ttft_p99_ms']} ms to p99 TTFT and"
            f" {added['longest_gap_ms']} ms to the longest inter-token gap"
            f" ({added['stream_longest_gap_p99_ms']} ms to the p99 of each stream's longest"
            f" gap): the target (at most {v['target_ms']} ms each) {holds} in this run.")
        if "machine_added" in v:
            mach, router = v["machine_added"], v["router_added"]
            rate = {c: round(float(np.mean([r["attack_requests_per_s"] for r in doc["runs"]
                                            if r["condition"] == c])), 1)
                    for c in ("control", "attacked")}
            lines.append(
                f"Sending to the sink instead ({rate['control']} attacks/s, against"
                f" {rate['attacked']}/s to the router), the attackers added {mach['ttft_p99_ms']}"
                f" ms to p99 TTFT and {mach['longest_gap_ms']} ms to the longest gap"
                f" ({mach['stream_longest_gap_p99_ms']} ms to the p99 of each stream's longest"
                " gap) without touching the router; beyond that, the router's handling of the"
                f" attacks added {router['ttft_p99_ms']} ms, {router['longest_gap_ms']} ms and"
                f" {router['stream_longest_gap_p99_ms']} ms.")
    errors = sum(r["errors"] for r in doc["runs"])
    down = sum(r["replica_down_polls"] for r in doc["runs"])
    lines.append(f"Normal requests that failed: {errors}. Polls that found a replica marked"
                 f" down: {down}.")
    return "\n".join(lines) + "\n"


def execute(args: argparse.Namespace) -> int:
    doc = run_async(benchmark(args))
    text = json.dumps(doc, indent=2)
    print(markdown(doc))
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / f"{args.name}.json").write_text(text + "\n")
        (args.out_dir / f"{args.name}.md").write_text(markdown(doc))
    return 0


def _process_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(description="the attacker and sink processes of"
                                            " lpu-bench hostile-prompts")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--attacker", help="attack this base URL")
    role.add_argument("--sink", action="store_true", help="serve the control's sink")
    p.add_argument("--loops", type=int, default=2)
    p.add_argument("--attack-mb", type=float, default=4.0)
    p.add_argument("--interval", type=float, default=0.0)
    p.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority")
    args = p.parse_args(argv)
    if args.sink:
        run_async(_sink())
        return 0
    os.nice(args.nice)
    run_async(_attack(args.attacker, args.loops, args.attack_mb, args.interval))
    return 0


if __name__ == "__main__":
    raise SystemExit(_process_main(sys.argv[1:]))
