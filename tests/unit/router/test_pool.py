"""Backend health state: probe results, passive ejection and recovery on a virtual clock."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from router.config import HealthConfig, parse_config
from router.metrics import make_metrics
from router.pool import BackendPool

A, B = "http://127.0.0.1:9101", "http://127.0.0.1:9102"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pool(clock: Clock, backends: list[str] | None = None
          ) -> tuple[BackendPool, list[tuple[str, str, bool]], CollectorRegistry]:
    cfg = parse_config({"buckets": [{"name": "s", "model": "m", "artifact": "llama-3.1-8b-2k",
                                     "backends": backends or [A, B]}]})
    changes: list[tuple[str, str, bool]] = []
    reg = CollectorRegistry()
    pool = BackendPool(cfg.buckets, HealthConfig(eject_after_failures=2, eject_for_s=5.0),
                       clock=clock, metrics=make_metrics(reg),
                       on_change=lambda b, u, up: changes.append((b, u, up)))
    return pool, changes, reg


def _up(reg: CollectorRegistry, url: str) -> float | None:
    return reg.get_sample_value("lpu_router_backend_up", {"bucket": "s", "backend": url})


def test_passive_ejection_and_recovery() -> None:
    clock = Clock()
    pool, changes, reg = _pool(clock)
    assert pool.is_up("s", A) and _up(reg, A) == 1
    pool.report_failure("s", A)
    assert pool.is_up("s", A)  # one failure is not enough
    pool.report_success("s", A)
    pool.report_failure("s", A)
    assert pool.is_up("s", A)  # the success reset the count
    slots = reg.get_sample_value("lpu_router_slots", {"bucket": "s"})
    assert slots is not None and slots > 0
    pool.report_failure("s", A)
    assert not pool.is_up("s", A) and _up(reg, A) == 0
    assert not pool.replica("s", A).up  # the record admission reads
    assert changes == [("s", A, False)]
    assert pool.ready() == {"s": 1}
    assert reg.get_sample_value("lpu_router_slots", {"bucket": "s"}) == slots / 2
    clock.now += 4.9
    assert not pool.is_up("s", A)
    clock.now += 0.2
    assert pool.is_up("s", A) and _up(reg, A) == 1
    assert changes == [("s", A, False), ("s", A, True)]


def test_failed_probe_marks_down_until_a_good_one() -> None:
    pool, changes, _ = _pool(Clock())
    pool.set_probe("s", B, False)
    assert not pool.is_up("s", B)
    pool.set_probe("s", B, True)
    assert pool.is_up("s", B)
    assert changes == [("s", B, False), ("s", B, True)]
