"""Shared helpers of the deploy/ tests: paths, tool lookup, and PromQL name extraction.

Tools (promtool, prometheus) may be missing on a developer machine: tests skip
then, unless ``LPU_REQUIRE_PROMETHEUS=1`` (set by ``.ci/run``), where a missing
tool is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RULE_FILES = (RULES_DIR / "recording.rules.yml", RULES_DIR / "alerts.rules.yml")
ALERT_TESTS = DEPLOY / "prometheus" / "tests" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lpu-router.json"

RATE_INTERVAL = "10s"
"""What ``$__rate_interval`` becomes when a panel query is sent to Prometheus directly."""


def require_tool(name: str) -> str:
    """Path of executable ``name``; skip the test without it (fail under LPU_REQUIRE_PROMETHEUS)."""
    path = shutil.which(name)
    if path is not None:
        return path
    if os.environ.get("LPU_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(f"{name} is required (LPU_REQUIRE_PROMETHEUS=1) but not on PATH;"
                    " install Debian's 'prometheus' package")
    pytest.skip(f"{name} not installed (Debian package 'prometheus')")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text("utf-8"))


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return data


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title / refId, expr)`` of every query of every panel (rows excluded)."""
    out: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} / {target['refId']}", target["expr"]))
    return out


def rules() -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of the rule files, in file order."""
    out: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            out.extend(group["rules"])
    return out


def recording_rule_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def substitute(expr: str) -> str:
    """A panel query as Prometheus would get it with every template variable on "All"."""
    return (expr.replace("$__rate_interval", RATE_INTERVAL)
            .replace("$bucket", ".*").replace("$instance", ".*"))


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_LABEL_LISTS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)
_BRACES = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"})


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (functions, keywords and label names left out)."""
    text = _STRING.sub('""', expr)
    text = _LABEL_LISTS.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _RANGES.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name not in _KEYWORDS:
            names.add(name)
    return names


def exposed_names(exposition: str) -> set[str]:
    """Sample names a text exposition can carry, from its ``# TYPE`` lines.

    Families without samples yet (a labelled counter nobody incremented) count:
    their series appear as soon as the event happens.
    """
    out: set[str] = set()
    suffixes = {"counter": ("",), "gauge": ("",), "untyped": ("",),
                "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", ""),
                "info": ("",), "stateset": ("",)}
    for line in exposition.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            name, kind = parts[2], parts[3]
            for suffix in suffixes.get(kind, ("",)):
                out.add(name + suffix)
    return out


def registry_names(registry: CollectorRegistry) -> set[str]:
    return exposed_names(generate_latest(registry).decode())


def supervisor_names() -> set[str]:
    """Series the worker supervisor writes (only a router with workers exports them)."""
    from router.metrics import make_supervisor_metrics

    registry = CollectorRegistry()
    make_supervisor_metrics(2, registry)
    return registry_names(registry)
