"""``lpu-router``: the command line (parsing only; the work is in ``router.server``/``demo``).

    lpu-router serve CONFIG [--workers N|auto]
                                       serve the router described by CONFIG (TOML);
                                       SIGTERM drains, SIGHUP reloads CONFIG; --workers
                                       (default server.workers, 1): N worker processes
                                       on the port under a supervisor (router/workers.py)
    lpu-router check CONFIG            validate CONFIG, print every error, exit 1 if invalid
    lpu-router --check CONFIG          the same
    lpu-router demo [--port 8080] [--time-scale S] [--output-length fixed|geometric]
                    [--workers N]      emulated backends for short/medium/long + the router
                                       (reply lengths geometric, mean 128, unless fixed;
                                       the router as N worker processes with --workers)

``lpu-router worker`` (not listed) is one worker process, started by the supervisor only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from router.config import ConfigError, RouterConfig, limits_errors, load_config, workers_count

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lpu-router", description="Admission-control router for"
                                " deterministic LLM inference backends.")
    p.add_argument("--check", metavar="CONFIG", help="validate CONFIG and exit")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = p.add_subparsers(dest="command", metavar="{serve,check,demo}")
    s = sub.add_parser("serve", help="serve the router described by a TOML config")
    s.add_argument("config")
    s.add_argument("--workers", type=_workers_arg, metavar="N|auto",
                   help="worker processes on the port (default: server.workers, 1); auto:"
                   " one per core this process may run on")
    c = sub.add_parser("check", help="validate a TOML config and exit")
    c.add_argument("config")
    d = sub.add_parser(
        "demo", help="emulated backends for default buckets plus the router",
        description="Emulated backends for the short/medium/long buckets plus the router. Reply"
        " lengths: geometric by default (mean 128 tokens, at most max_tokens, finish_reason"
        " 'stop' when shorter), like a model that chooses when to stop; --output-length fixed"
        " gives exactly max_tokens every time (the emulator's own default).")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every emulated duration (0.1 = ten times faster)")
    d.add_argument("--replicas", type=int, default=2, help="emulated replicas per bucket")
    d.add_argument("--output-length", choices=["fixed", "geometric"], default="geometric",
                   help="reply lengths: geometric (default; mean --output-mean, at most"
                   " max_tokens) or fixed (exactly max_tokens)")
    d.add_argument("--output-mean", type=float, default=128.0,
                   help="geometric: mean reply length in tokens (default 128)")
    d.add_argument("--workers", type=_workers_arg, default=1, metavar="N|auto",
                   help="the router as N worker processes (default 1: in this process)")
    # One worker of a supervisor's pod (router/workers.py); not for people to start.
    w = sub.add_parser("worker")
    w.add_argument("config")
    w.add_argument("--index", type=int, required=True)
    w.add_argument("--workers", type=int, required=True)
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--supervisor", type=int, required=True)
    return p


def _workers_arg(text: str) -> int:
    try:
        return workers_count(int(text) if text.isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _check(path: str) -> RouterConfig | None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    return config


def _run(coro: Coroutine[Any, Any, None], log_level: str) -> None:
    """Run ``coro`` on uvloop, the process's one log listener running around it."""
    from router import access_log, log_queue
    from router.process import collect_less, raise_fd_limit, return_freed_memory

    # Before any socket or large buffer: see router/process.py for why.
    raise_fd_limit()
    return_freed_memory()
    collect_less()
    # The loop never writes a log line itself (router/log_queue.py); stop() writes what is
    # still queued once the loop has drained, so a SIGTERM loses no access line.
    log_queue.start(log_level)
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
            asyncio.run(coro)
        else:
            uvloop.run(coro)
    finally:
        access_log.flush()
        log_queue.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check or args.command == "check":
        # No loop to keep free: lines are written at once.
        from router.log_queue import LINE_FORMAT

        logging.basicConfig(level=args.log_level.upper(), format=LINE_FORMAT)
        path = args.check or args.config
        config = _check(path)
        if config is None:
            return 1
        print(f"{path}: OK ({len(config.buckets)} buckets, models: {', '.join(config.models)})")
        return 0
    if args.command == "serve":
        config = _check(args.config)
        if config is None:
            return 1
        if args.workers is not None:
            config = dataclasses.replace(
                config, server=dataclasses.replace(config.server, workers=args.workers))
            problems = limits_errors(config.limits, args.workers, config.admission)
            if problems:
                print(ConfigError(f"{args.config} with --workers {args.workers}", problems),
                      file=sys.stderr)
                return 1

        def ready(url: str) -> None:
            print(f"lpu-router serving on {url}", flush=True)

        if config.server.workers > 1:
            from router.workers import supervise

            _run(supervise(config, args.config, log_level=args.log_level, on_ready=ready,
                           metrics_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR")),
                 args.log_level)
            return 0
        from router.server import serve_forever

        _run(serve_forever(config, on_ready=ready, config_path=args.config), args.log_level)
        return 0
    if args.command == "worker":
        return _worker(args)
    if args.command == "demo":
        from lpu_demo.stack import demo_length, run_demo

        def echo(text: str) -> None:
            print(text, flush=True)

        length = demo_length(args.output_length, args.output_mean)
        _run(run_demo(host=args.host, port=args.port, time_scale=args.time_scale,
                      replicas=args.replicas, output_length=length, echo=echo,
                      workers=args.workers, log_level=args.log_level), args.log_level)
        return 0
    build_parser().print_help()
    return 2


def _worker(args: argparse.Namespace) -> int:
    """One worker of a supervisor's pod: the config file as it is now, the supervisor's port
    and multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, set before anything imported
    prometheus-client)."""
    import signal

    # Until the loop takes SIGHUP (a reload), one arriving during the start must not end it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from router.worker_id import WorkerId
    from router.worker_process import die_with_parent, serve_worker

    die_with_parent(args.supervisor)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        print("lpu-router worker: PROMETHEUS_MULTIPROC_DIR is not set (started by hand?"
              " use lpu-router serve --workers N)", file=sys.stderr)
        return 2
    config = _check(args.config)
    if config is None:
        return 1
    worker = WorkerId.here(args.index, args.workers)
    _run(serve_worker(config, config_path=args.config, worker=worker, port=args.port,
                      multiprocess_dir=directory), args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
