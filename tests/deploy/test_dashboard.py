"""The Grafana dashboard: generated copy up to date, well-formed, and reading only real series.

The live test (test_prometheus_live.py) shows every query returns data; this
one shows, without a server, that every name a query reads is exported by the
router's or the emulator's metric catalog or defined by a recording rule.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest
from deploy_support import (
    DEPLOY,
    load_dashboard,
    metric_names,
    panel_targets,
    recording_rule_names,
    registry_names,
    rules,
    supervisor_names,
)

from lpu_emulator.metrics import make_metrics as make_emulator_metrics
from router.metrics import make_metrics as make_router_metrics

DASHBOARD = load_dashboard()
TARGETS = panel_targets(DASHBOARD)


def _load_generator() -> ModuleType:
    path = DEPLOY / "grafana" / "dashboard.py"
    spec = importlib.util.spec_from_file_location("lpu_dashboard_generator", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _exported() -> set[str]:
    # The supervisor of a router with workers writes its own series (worker restarts).
    return (registry_names(make_router_metrics().registry)
            | supervisor_names()
            | registry_names(make_emulator_metrics().registry))


def test_committed_dashboards_match_the_generator() -> None:
    generator = _load_generator()
    text = generator.render()
    for path in generator.OUTPUTS:
        assert path.read_text("utf-8") == text, f"{path} is stale: run deploy/grafana/dashboard.py"


@pytest.mark.parametrize(("where", "expr"), TARGETS, ids=[t[0] for t in TARGETS])
def test_panel_query_reads_only_exported_series_or_recording_rules(where: str, expr: str) -> None:
    known = _exported() | recording_rule_names() | {"up"}
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    assert names <= known, f"{where}: unknown series {sorted(names - known)}"


@pytest.mark.parametrize("rule", rules(), ids=[r.get("record", r.get("alert")) for r in rules()])
def test_rule_reads_only_exported_series_or_recording_rules(rule: dict[str, Any]) -> None:
    known = _exported() | recording_rule_names() | {"up"}
    names = metric_names(rule["expr"])
    assert names and names <= known, f"unknown series {sorted(names - known)}"


def test_the_dashboard_uses_every_recording_rule_the_alerts_do_not() -> None:
    used = set().union(*(metric_names(e) for _, e in TARGETS))
    by_alerts = set().union(*(metric_names(r["expr"]) for r in rules() if "alert" in r))
    # The offered/admitted/rejected rates only feed the ratios.
    helpers = {r["record"] for r in rules() if "record" in r and r["record"].endswith(":rate1m")
               and "requests" in r["record"]}
    unused = recording_rule_names() - used - by_alerts - helpers
    assert not unused, f"recording rules nobody reads: {sorted(unused)}"


def test_template_variables_and_datasource() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert set(variables) >= {"datasource", "bucket", "instance"}
    for name in ("bucket", "instance"):
        var = variables[name]
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"
        assert metric_names(var["query"]["query"].removeprefix("label_values(").split(",")[0])
    assert variables["datasource"]["current"]["value"] == "lpu-prometheus"
    for panel in DASHBOARD["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        mine = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_operator_panels_are_all_there() -> None:
    exprs = " ".join(e for _, e in TARGETS)
    for needed in (
        "lpu_router_requests_received_total", "lpu_router_requests_admitted_total",
        "lpu_router_requests_rejected_total", "bucket:lpu_router_ttft_seconds:p99_1m",
        "bucket:lpu_router_ttft_slo_seconds:max", "bucket:lpu_router_utilization_target:max",
        "bucket:lpu_router_utilization_knee:ratio", "lpu_router_queue_depth",
        "lpu_router_in_flight", "bucket:lpu_router_prediction_error_seconds:p50_1m",
        "lpu_router_backend_up", "lpu_router_completion_tokens_total",
        "lpu_router_requests_finished_total", "vllm:num_requests_running",
        "vllm:num_requests_waiting", "lpu:slot_utilization",
    ):
        assert needed in exprs, needed
