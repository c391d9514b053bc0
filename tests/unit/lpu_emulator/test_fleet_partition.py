"""How a fleet splits replicas over processes, and the command line each child gets."""

from __future__ import annotations

import os

import pytest

from lpu_emulator.__main__ import main
from lpu_emulator.fleet import Block, child_argv, default_processes, partition


@pytest.mark.parametrize(
    ("replicas", "processes", "blocks"),
    [(1, 1, [(0, 1)]), (4, 2, [(0, 2), (2, 2)]), (5, 3, [(0, 2), (2, 2), (4, 1)]),
     (3, 3, [(0, 1), (1, 1), (2, 1)]), (7, 2, [(0, 4), (4, 3)])],
    ids=["one", "even", "uneven", "one-each", "seven-over-two"],
)
def test_partition_is_contiguous_and_balanced(
    replicas: int, processes: int, blocks: list[tuple[int, int]]
) -> None:
    assert partition(replicas, processes) == [Block(f, c) for f, c in blocks]


@pytest.mark.parametrize(("replicas", "processes"), [(2, 0), (2, 3)], ids=["zero", "too-many"])
def test_partition_refuses_impossible_splits(replicas: int, processes: int) -> None:
    with pytest.raises(ValueError, match="processes"):
        partition(replicas, processes)


def test_default_is_one_process_per_core_never_more_than_replicas() -> None:
    cores = len(os.sched_getaffinity(0))
    assert default_processes(1) == 1
    assert default_processes(1000) == cores
    assert default_processes(cores + 1) == cores


def test_child_gets_its_block_port_and_seed_last() -> None:
    argv = ["--artifact", "a", "--port", "8001", "--replicas", "5", "--seed", "7"]
    assert child_argv(argv, Block(2, 2), 8001, 7)[len(argv):] == [
        "--processes", "1", "--replicas", "2", "--port", "8003", "--seed", "9"]
    assert child_argv(argv, Block(2, 2), 0, 7)[-3] == "0"  # ephemeral stays ephemeral


@pytest.mark.parametrize("processes", ["0", "3"], ids=["zero", "above-replicas"])
def test_processes_out_of_range_exit_2(processes: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--artifact", "llama-3.1-8b-2k", "--replicas", "2",
                 "--processes", processes]) == 2
    assert "--processes must be between 1 and --replicas (2)" in capsys.readouterr().err
