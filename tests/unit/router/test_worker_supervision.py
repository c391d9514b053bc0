"""The pieces of ``--workers``: the count (config and CLI), the restart backoff, exit statuses
in words, the port reservation, and the gauges sampled in multiprocess mode."""

from __future__ import annotations

import errno
import os
import socket
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from router.__main__ import build_parser
from router.config import MAX_WORKERS, ConfigError, parse_config, workers_count
from router.fast_metrics import Gauge
from router.gauge_sampler import GaugeSampler, sampled_gauge_class
from router.metrics import make_metrics
from router.workers import BACKOFF_FIRST_S, BACKOFF_MAX_S, Backoff, exit_status, reserve_port

_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_BUCKET = {"name": "short", "model": "m", "artifact": "llama-3.1-8b-2k",
           "backends": ["http://127.0.0.1:1"]}


@pytest.mark.parametrize(("value", "count"), [(1, 1), (4, 4), (MAX_WORKERS, MAX_WORKERS),
                                              ("auto", _CORES)], ids=["1", "4", "max", "auto"])
def test_server_workers_accepts_a_count_or_auto(value: object, count: int) -> None:
    config = parse_config({"server": {"workers": value}, "buckets": [_BUCKET]})
    assert config.server.workers == count


@pytest.mark.parametrize(("value", "message"), [
    (0, "must be in [1, 256]"), (MAX_WORKERS + 1, "must be in [1, 256]"),
    ("two", "expected an integer or \"auto\""), (True, "expected an integer"),
    (2.0, "expected an integer"), ("2", "expected an integer"),
], ids=["zero", "too-many", "word", "bool", "float", "string"])
def test_server_workers_errors_name_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"server": {"workers": value}, "buckets": [_BUCKET]})
    assert [e for e in err.value.errors if e.startswith("server.workers: ")] \
        and message in str(err.value)


def test_the_default_is_one_process() -> None:
    assert parse_config({"buckets": [_BUCKET]}).server.workers == 1


@pytest.mark.parametrize(("arg", "count"), [("3", 3), ("auto", _CORES)], ids=["3", "auto"])
def test_cli_workers_override(arg: str, count: int) -> None:
    assert build_parser().parse_args(["serve", "c.toml", "--workers", arg]).workers == count
    assert build_parser().parse_args(["serve", "c.toml"]).workers is None
    assert build_parser().parse_args(["demo", "--workers", arg]).workers == count
    assert workers_count("auto") == _CORES


@pytest.mark.parametrize("arg", ["0", "x", "-1"], ids=["zero", "word", "negative"])
def test_cli_workers_refuses_nonsense(arg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "c.toml", "--workers", arg])
    assert "--workers" in capsys.readouterr().err


def test_backoff_doubles_to_its_cap_and_resets_after_a_long_life() -> None:
    b = Backoff()
    delays = [b.after_exit(0.1) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert delays[0] == BACKOFF_FIRST_S and max(delays) == BACKOFF_MAX_S
    assert b.after_exit(60.0) == 0.5  # lived a minute: from the start again
    assert b.after_exit(59.9) == 1.0


@pytest.mark.parametrize(("code", "words"), [
    (0, "exit status 0"), (1, "exit status 1"), (-9, "killed by SIGKILL"),
    (-15, "killed by SIGTERM"), (-200, "killed by signal 200"),
], ids=["ok", "error", "kill", "term", "unknown-signal"])
def test_exit_status_in_words(code: int, words: str) -> None:
    assert exit_status(code) == words


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT semantics of Linux")
def test_the_reserved_port_takes_no_connection_and_workers_share_it() -> None:
    reserved = reserve_port("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    assert port != 0
    worker = socket.socket()
    worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    worker.bind(("127.0.0.1", port))
    worker.listen(8)
    stranger = socket.socket()  # without SO_REUSEPORT: the port is taken
    with pytest.raises(OSError) as err:
        stranger.bind(("127.0.0.1", port))
    assert err.value.errno == errno.EADDRINUSE
    worker.settimeout(5)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        conn, _ = worker.accept()  # every connection reaches the listening worker
        conn.close()
    for s in (stranger, worker, reserved):
        s.close()


def test_a_sampled_gauge_shows_its_function_once_sampled() -> None:
    sampler = GaugeSampler()
    registry = CollectorRegistry()
    gauge = sampled_gauge_class(sampler)("held", "h", ["bucket"], registry=registry)
    value = {"short": 3.0}
    gauge.labels("short").set_function(lambda: value["short"])
    assert registry.get_sample_value("held", {"bucket": "short"}) == 0.0  # nothing yet
    sampler.sample()
    assert registry.get_sample_value("held", {"bucket": "short"}) == 3.0
    value["short"] = 5.0
    gauge.labels("short").set_function(lambda: 7.0)  # a later generation's function wins
    sampler.sample()
    assert registry.get_sample_value("held", {"bucket": "short"}) == 7.0


def test_a_single_process_reads_its_gauges_at_scrape_as_before() -> None:
    registry = CollectorRegistry()
    metrics = make_metrics(registry)
    assert type(metrics.in_flight) is Gauge and metrics.sampler is None
    assert metrics.multiprocess_dir is None
    metrics.in_flight.labels("short", "http://b").set_function(lambda: 2.0)
    assert registry.get_sample_value("lpu_router_in_flight",
                                     {"bucket": "short", "backend": "http://b"}) == 2.0
    assert metrics.exposition() == generate_latest(registry)
