"""promtool checks of the Prometheus config and rules, and the shape every alert must have."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
from deploy_support import (
    ALERT_TESTS,
    DEPLOY,
    REPO,
    RULE_FILES,
    load_yaml,
    recording_rule_names,
    require_tool,
    rules,
)

ALERTS = [r for r in rules() if "alert" in r]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True,
                          timeout=60, check=False, cwd=DEPLOY / "prometheus")


def test_promtool_check_config() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _alert_cases() -> dict[str, tuple[int, int]]:
    """alertname -> (cases expecting it to fire, cases expecting silence)."""
    cases: dict[str, tuple[int, int]] = {}
    for test in load_yaml(ALERT_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            fire, quiet = cases.get(case["alertname"], (0, 0))
            if case.get("exp_alerts"):
                fire += 1
            else:
                quiet += 1
            cases[case["alertname"]] = (fire, quiet)
    return cases


@pytest.mark.parametrize("alert", ALERTS, ids=[a["alert"] for a in ALERTS])
def test_every_alert_has_a_firing_and_a_quiet_unit_test(alert: dict[str, Any]) -> None:
    fire, quiet = _alert_cases().get(alert["alert"], (0, 0))
    assert fire >= 1, f"no promtool case where {alert['alert']} fires"
    assert quiet >= 1, f"no promtool case where {alert['alert']} stays quiet"


def _doc_anchors() -> set[str]:
    """GitHub-style anchors of the headings of docs/deploy.md."""
    text = (REPO / "docs" / "deploy.md").read_text("utf-8")
    anchors = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("alert", ALERTS, ids=[a["alert"] for a in ALERTS])
def test_alert_is_runbook_ready(alert: dict[str, Any]) -> None:
    assert alert.get("for"), "an alert without 'for:' pages on a single bad evaluation"
    assert alert["labels"]["severity"] in {"warning", "critical"}
    notes = alert["annotations"]
    assert notes["summary"] and notes["description"]
    path, _, anchor = notes["runbook"].partition("#")
    assert path == "docs/deploy.md"
    assert anchor in _doc_anchors(), f"docs/deploy.md has no heading for #{anchor}"


def test_recording_rule_names_are_unique_and_follow_the_convention() -> None:
    names = [r["record"] for r in rules() if "record" in r]
    assert len(names) == len(set(names)) == len(recording_rule_names())
    for name in names:
        assert re.fullmatch(r"bucket:lpu_router_[a-z0-9_]+:[a-z0-9_]+", name), name
