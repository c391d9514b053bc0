"""``lpu-bench``: the benchmark command line. Each subcommand lives in its own module.

A subcommand module exposes ``HELP: str``, ``configure(parser)`` and
``execute(args) -> int`` (the exit status); add it to ``_COMMANDS`` to register it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from types import ModuleType

from benchmarks import (
    admission_decision,
    emulator_fidelity,
    fidelity_floor,
    hostile_prompts,
    planner,
    run_command,
    scale_out,
    soak,
    trace_soak,
)
from benchmarks.experiments import sweep
from benchmarks.overhead import client_cost, instructions
from benchmarks.overhead import command as overhead

__all__ = ["build_parser", "main"]

_COMMANDS: dict[str, ModuleType] = {
    "run": run_command,
    "plan": planner,
    "sweep": sweep,
    "soak": soak,
    "hostile-prompts": hostile_prompts,
    "overhead": overhead,
    "instructions": instructions,
    "client-cost": client_cost,
    "emulator-fidelity": emulator_fidelity,
    "fidelity-floor": fidelity_floor,
    "decision-cost": admission_decision,
    "scale-out": scale_out,
    "trace-soak": trace_soak,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpu-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in _COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(p)
        p.set_defaults(execute=module.execute)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    execute: Callable[[argparse.Namespace], int] = args.execute
    return execute(args)


if __name__ == "__main__":
    raise SystemExit(main())
