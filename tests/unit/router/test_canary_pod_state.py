"""The pod's shared canary and rollout state (router.canary_shared): two workers' views over one
file in a temporary directory, each synced by hand (no event loop, no timing)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from router.canary import Canary, CanaryConfig, CanaryState, Role
from router.canary_shared import PodState, state_file
from router.rollout import RolloutError
from router.worker_id import WorkerId


def _canary() -> Canary:
    return Canary("small", "v1", CanaryConfig("v2", min_requests=1,
                                              max_prediction_error_ms=10.0), ttft_slo_s=1.0)


def _pods(tmp_path: Path) -> tuple[tuple[PodState, Canary], tuple[PodState, Canary]]:
    path = state_file(tmp_path, 4711)
    a, b = _canary(), _canary()
    # Two live pids: this process and its parent.
    return ((PodState(path, WorkerId(0, 2, os.getpid()), {"small": a}, None), a),
            (PodState(path, WorkerId(1, 2, os.getppid()), {"small": b}, None), b))


def test_one_workers_rollback_stops_the_canary_in_every_worker(tmp_path: Path) -> None:
    (pa, a), (pb, b) = _pods(tmp_path)
    pa.sync()
    pb.sync()
    assert not state_file(tmp_path, 4711).exists()  # nothing changed: nothing written
    a.first_token(Role.CANARY, 0.1, 0.05)  # worker 0's judge: 50 ms error > 10 ms bound
    assert a.state is CanaryState.ROLLED_BACK
    pa.sync()  # publishes
    assert b.state is CanaryState.ACTIVE
    pb.sync()  # applies
    assert b.state is CanaryState.ROLLED_BACK
    assert b.reason is not None and "judged by worker 0" in b.reason
    doc = json.loads(state_file(tmp_path, 4711).read_text())
    assert doc["buckets"]["small"]["canary"]["epoch"] == 1
    pb.sync()  # applying is not a change of its own: nothing published back
    assert json.loads(state_file(tmp_path, 4711).read_text()) == doc


def test_a_clear_and_a_promotion_in_one_worker_act_in_all(tmp_path: Path) -> None:
    (pa, a), (pb, b) = _pods(tmp_path)
    a.roll_back("test")
    pa.sync()
    pb.sync()
    assert b.state is CanaryState.ROLLED_BACK
    b.clear()  # the operator's call reached worker 1
    pb.sync()
    pa.sync()
    assert a.state is CanaryState.ACTIVE
    a.promote()  # and this one worker 0
    pa.sync()
    pb.sync()
    assert (b.state, b.stable_version, b.config) == (CanaryState.NONE, "v2", None)


def test_concurrent_changes_end_in_one_state_everywhere(tmp_path: Path) -> None:
    (pa, a), (pb, b) = _pods(tmp_path)
    a.roll_back("a's judge")
    b.promote()  # meanwhile, in the other worker, before either synced
    pa.sync()  # epoch 1: rolled back
    pb.sync()  # applies epoch 1 (nothing to roll back: promoted), publishes epoch 2
    pa.sync()  # applies epoch 2: the promotion, published last
    assert (a.state, a.stable_version) == (b.state, b.stable_version) == (CanaryState.NONE,
                                                                          "v2")
    doc = json.loads(state_file(tmp_path, 4711).read_text())
    assert doc["buckets"]["small"]["canary"]["epoch"] == 2


def test_a_rollout_has_one_owner(tmp_path: Path) -> None:
    (pa, _), (pb, _) = _pods(tmp_path)
    pa.claim_rollout("small")
    with pytest.raises(RolloutError) as err:
        pb.claim_rollout("small")
    assert err.value.status == 409 and "worker 0" in str(err.value)
    assert pb.rollouts()["small"]["worker"] == 0
    pa.release_rollout("small")
    pb.claim_rollout("small")  # released: free to claim
    assert pa.rollouts()["small"]["worker"] == 1


def test_a_dead_owners_rollout_can_be_taken_over(tmp_path: Path) -> None:
    path = state_file(tmp_path, 4711)
    path.write_text(json.dumps({"buckets": {"small": {"rollout": {
        "worker": 1, "pid": 2 ** 22 + 12345, "state": "running"}}}}))
    pa = PodState(path, WorkerId(0, 2, os.getpid()), {}, None)
    pa.claim_rollout("small")
    assert pa.rollouts()["small"]["worker"] == 0
