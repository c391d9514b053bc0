"""The rolling swap's rules without a backend: what stops it before any swap call, and the
refusals of its start (a fake admission view at the seam)."""

from __future__ import annotations

import asyncio

import pytest

from lpu_protocol.artifact import builtin_artifact
from lpu_protocol.load_report import LoadReport
from router.canary import Canary, CanaryConfig, Role
from router.rollout import RolloutError, Rollouts, RolloutState

URLS = ("http://127.0.0.1:1", "http://127.0.0.1:2")
TARGET = builtin_artifact("llama-3.1-8b-2k")


class View:
    """Every replica up, each reporting ``versions[url]``; holds are recorded."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions = versions
        self.held: list[str] = []

    def replica_status(self, bucket: str, url: str) -> tuple[bool, LoadReport | None]:
        report = LoadReport(slots=1, running=0, waiting=0, slot_free_in_s=(0.0,),
                            prefill_s=0.08, per_token_s=0.002, artifact=TARGET.name,
                            version=self.versions[url], digest=TARGET.digest)
        return True, report

    def hold(self, bucket: str, url: str) -> None:
        self.held.append(url)


class Down(View):
    """No replica is ever up: a rollout waits for the others."""

    def replica_status(self, bucket: str, url: str) -> tuple[bool, LoadReport | None]:
        return False, None


def _rollouts(view: View, canary: Canary | None = None) -> Rollouts:
    return Rollouts({"small": URLS}, view, session=lambda: None,
                    canaries={"small": canary} if canary is not None else None, poll_s=0.001)


async def _finish(r: Rollouts) -> None:
    for _ in range(100):
        if r.progress["small"].state is not RolloutState.RUNNING:
            return
        await asyncio.sleep(0.001)


async def test_rolled_back_canary_of_the_target_stops_it_before_any_swap() -> None:
    canary = Canary("small", "old", CanaryConfig(TARGET.version, min_requests=1,
                                                 max_error_rate=0.0), ttft_slo_s=1.0)
    canary.ended(Role.CANARY, failed=True)
    view = View(dict.fromkeys(URLS, "old"))
    r = _rollouts(view, canary)
    r.start("small", {"artifact": TARGET.name})
    await _finish(r)
    p = r.progress["small"]
    assert p.state is RolloutState.STOPPED and view.held == []
    assert p.reason is not None and "was rolled back" in p.reason


async def test_replicas_already_serving_the_target_are_skipped_and_it_completes() -> None:
    canary = Canary("small", "old", None, ttft_slo_s=1.0)
    view = View(dict.fromkeys(URLS, TARGET.version))
    r = _rollouts(view, canary)
    r.start("small", {"artifact": TARGET.name})
    await _finish(r)
    p = r.progress["small"]
    assert (p.state, p.swapped, view.held) == (RolloutState.DONE, list(URLS), [])
    assert canary.stable_version == TARGET.version


async def test_without_a_session_it_stops_before_holding_a_replica() -> None:
    view = View(dict.fromkeys(URLS, "old"))
    r = _rollouts(view)
    r.start("small", {"artifact": TARGET.name})
    await _finish(r)
    p = r.progress["small"]
    assert p.state is RolloutState.STOPPED and view.held == []
    assert p.reason is not None and "no client session" in p.reason


@pytest.mark.parametrize(("bucket", "body", "status", "code"), [
    ("nope", {"artifact": TARGET.name}, 404, "bucket_not_found"),
    ("small", {}, 400, "invalid_value"),
    ("small", {"artifact": "no-such-artifact"}, 400, "invalid_artifact"),
    ("small", {"toml": "[artifact"}, 400, "invalid_artifact"),
], ids=["unknown-bucket", "no-target", "unknown-artifact", "bad-toml"])
async def test_start_refusals(bucket: str, body: dict[str, str], status: int, code: str) -> None:
    r = _rollouts(View(dict.fromkeys(URLS, "old")))
    with pytest.raises(RolloutError) as info:
        r.start(bucket, body)
    assert (info.value.status, info.value.code) == (status, code)


async def test_one_running_rollout_per_bucket() -> None:
    r = Rollouts({"small": URLS}, Down(dict.fromkeys(URLS, "old")), session=lambda: None,
                 poll_s=10.0)
    r.start("small", {"artifact": TARGET.name})
    with pytest.raises(RolloutError) as info:
        r.start("small", {"artifact": TARGET.name})
    assert info.value.code == "rollout_in_progress"
    await r.close()
