"""``lpu-emulator``: serve emulated LPU backends from the command line.

Examples::

    lpu-emulator --artifact llama-3.1-8b-2k --port 8001
    lpu-emulator --artifact ./my-shape.toml --port 8001 --replicas 4 --time-scale 10
    lpu-emulator --artifact llama-3.1-8b-2k --port 8001 --replicas 8 --processes 4
    lpu-emulator --artifact llama-3.1-8b-2k --output-length geometric --output-mean 200
    lpu-emulator --artifact llama-3.1-8b-2k --error-rate 0.05 --crash-rate 0.01
    lpu-emulator --list-artifacts
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Sequence

from lpu_emulator.faults import FaultSettings
from lpu_emulator.fleet import default_processes, supervise
from lpu_emulator.lengths import OutputLength
from lpu_emulator.options import EmulatorOptions
from lpu_emulator.server import start_emulators
from lpu_protocol.artifact import ArtifactError, builtin_artifact_names, load_artifact

__all__ = ["build_parser", "main", "options_from_args"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lpu-emulator", description="Serve emulated deterministic LPU backends behind the"
        " OpenAI API.",
    )
    p.add_argument("--artifact", help="built-in artifact name or artifact TOML file")
    p.add_argument("--list-artifacts", action="store_true", help="list built-in artifacts, exit")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001, help="first port (0: ephemeral)")
    p.add_argument("--replicas", type=int, default=1, help="backends on consecutive ports")
    p.add_argument("--processes", type=int, default=None,
                   help="processes the replicas are spread over, each replica whole in one"
                   " (default: one per core, at most --replicas; 1: this process alone)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every artifact duration (10 = ten times slower)")
    p.add_argument("--max-queue", type=int, default=None,
                   help="requests allowed to wait for a slot; more get 503 (default unbounded)")
    p.add_argument("--output-length", choices=["fixed", "uniform", "geometric"], default="fixed",
                   help="fixed: exactly max_tokens; otherwise a seeded distribution")
    p.add_argument("--output-min", type=int, default=1, help="uniform: lowest length (tokens)")
    p.add_argument("--output-max", type=int, default=None,
                   help="uniform: highest length (tokens; default the allowance)")
    p.add_argument("--output-mean", type=float, default=128.0, help="geometric: mean (tokens)")
    p.add_argument("--seed", type=int, default=0, help="seed of output lengths and faults")
    p.add_argument("--tokenizer", default=None, help="count prompts with this tokenizer.json")
    p.add_argument("--tick-ms", type=float, default=1.5,
                   help="smallest delivery quantum: a stream writes at most once per tick (ms)")
    p.add_argument("--write-budget", type=float, default=25000.0,
                   help="most stream writes per second over all streams of a replica; the"
                   " quantum grows above --tick-ms to respect it (0: unbounded)")
    p.add_argument("--lenient", action="store_true",
                   help="accept any request field (default: OpenAI's and vLLM's sampling"
                   " extensions)")
    f = p.add_argument_group("fault injection (all off by default)")
    f.add_argument("--error-rate", "--fail-share", type=float, default=0.0, dest="error_rate",
                   help="P(500 before the first byte): the share of requests that fail")
    f.add_argument("--stall-rate", type=float, default=0.0, help="P(a pause mid-stream)")
    f.add_argument("--stall-s", type=float, default=0.0, help="length of a stall (seconds)")
    f.add_argument("--stall-after-tokens", type=int, default=1)
    f.add_argument("--crash-rate", type=float, default=0.0, help="P(connection dropped)")
    f.add_argument("--crash-after-tokens", type=int, default=1,
                   help="where crash, garbage and stream errors happen (tokens)")
    f.add_argument("--garbage-rate", type=float, default=0.0, help="P(a broken SSE frame)")
    f.add_argument("--stream-error-rate", type=float, default=0.0,
                   help="P(an error frame mid-stream)")
    f.add_argument("--actual-prefill-factor", type=float, default=1.0,
                   help="run prefill this many times the declared time (a lying artifact)")
    f.add_argument("--actual-per-token-factor", type=float, default=1.0,
                   help="run each token this many times the declared time (1.1: 10%% slower)")
    return p


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    """Build the options; raises ValueError or ArtifactError listing every problem."""
    faults = FaultSettings(
        error_rate=args.error_rate, stall_rate=args.stall_rate, stall_s=args.stall_s,
        stall_after_tokens=args.stall_after_tokens, crash_rate=args.crash_rate,
        crash_after_tokens=args.crash_after_tokens, garbage_rate=args.garbage_rate,
        stream_error_rate=args.stream_error_rate,
    )
    length = OutputLength(
        kind=args.output_length, low=args.output_min, high=args.output_max, mean=args.output_mean
    )
    return EmulatorOptions(
        artifact=load_artifact(args.artifact),
        time_scale=args.time_scale,
        max_queue=args.max_queue,
        output_length=length,
        seed=args.seed,
        faults=faults,
        tick_s=args.tick_ms / 1e3,
        write_budget_per_s=args.write_budget if args.write_budget > 0 else None,
        tokenizer=args.tokenizer,
        strict_params=not args.lenient,
        actual_prefill_factor=args.actual_prefill_factor,
        actual_per_token_factor=args.actual_per_token_factor,
    )


async def _serve(options: EmulatorOptions, replicas: int, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with start_emulators(options, replicas, host, port) as urls:
        _quiet_gc()
        art = options.artifact
        for url in urls:
            print(f"lpu-emulator: {art.name} ({art.version}) at {url}/v1", flush=True)
        await stop.wait()


def _quiet_gc() -> None:
    """Fewer cyclic-GC passes on the hot path: what exists at start-up (modules, apps, the
    vocabulary) is frozen out of every later pass, and a young-generation pass runs every
    50 000 net allocations instead of 700. A stream allocates a few objects per write, so at
    hundreds of streams the default thresholds run a pass every few ms (about 7% of the
    process's CPU at 250 streams, py-spy); what cycles a request leaves are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_artifacts:
        for name in builtin_artifact_names():
            print(name)
        return 0
    if not args.artifact:
        print("lpu-emulator: --artifact is required (see --list-artifacts)", file=sys.stderr)
        return 2
    if args.replicas < 1:
        print("lpu-emulator: --replicas must be >= 1", file=sys.stderr)
        return 2
    processes = default_processes(args.replicas) if args.processes is None else args.processes
    if not 1 <= processes <= args.replicas:
        print(f"lpu-emulator: --processes must be between 1 and --replicas ({args.replicas}),"
              f" got {processes}", file=sys.stderr)
        return 2
    try:
        options = options_from_args(args)
    except (ValueError, ArtifactError) as exc:
        print(f"lpu-emulator: {exc}", file=sys.stderr)
        return 2
    if processes > 1:
        return supervise(list(sys.argv[1:] if argv is None else argv), args.replicas,
                         processes, args.port, args.seed)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        asyncio.run(_serve(options, args.replicas, args.host, args.port))
    else:
        uvloop.run(_serve(options, args.replicas, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
