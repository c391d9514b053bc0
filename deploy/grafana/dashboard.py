"""Generate the LPU router Grafana dashboard (JSON, Grafana 10+ schema).

The dashboard is kept as code so that every panel query is written once, next
to the recording rules it reads (``deploy/prometheus/rules/recording.rules.yml``),
and the committed JSON can be checked for drift::

    python3 deploy/grafana/dashboard.py           # rewrite the JSON files
    python3 deploy/grafana/dashboard.py --check   # exit 1 if they are stale

Two identical copies are written: one for Grafana file provisioning (compose)
and one inside the kustomize base (a ConfigMap for the Grafana sidecar), since
kustomize refuses files outside its root.

Conventions the queries keep:

* router panels select ``bucket=~"$bucket"`` and ``instance=~"$instance"``;
  panels that read a ``bucket:`` recording rule are fleet-wide (aggregated over
  router replicas) and select only the bucket;
* emulator panels select the ``bucket`` target label the scrape configs attach;
* counters with a label set that may not exist yet (no upstream error so far)
  are joined with ``or 0 * <traffic>`` so the panel shows 0, not "No data".
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD_UID", "DATASOURCE_UID", "OUTPUTS", "build_dashboard", "render"]

DASHBOARD_UID = "lpu-router"
DATASOURCE_UID = "lpu-prometheus"
"""The uid the provisioned Prometheus datasource has (deploy/grafana/provisioning)."""

_DEPLOY = Path(__file__).resolve().parent.parent
OUTPUTS = (
    _DEPLOY / "grafana" / "dashboards" / "lpu-router.json",
    _DEPLOY / "k8s" / "base" / "grafana" / "lpu-router-dashboard.json",
)

_DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
_R = 'bucket=~"$bucket", instance=~"$instance"'
"""Selector of raw router series."""
_B = 'bucket=~"$bucket"'
"""Selector of per-bucket recording rules and emulator series."""
_I = 'instance=~"$instance"'
"""Selector of per-process router series (no bucket label)."""
_RI = "$__rate_interval"


@dataclass(frozen=True, slots=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    kind: str = "timeseries"
    max_value: float | None = None
    dashed: str | None = None
    """Regex of series names drawn as dashed reference lines (SLO, target, knee)."""
    mappings: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def _rate(metric: str, selector: str = _R) -> str:
    return f"rate({metric}{{{selector}}}[{_RI}])"


def _quantile(q: float, metric: str, selector: str = _R) -> str:
    return f"histogram_quantile({q}, sum by (bucket, le) ({_rate(metric + '_bucket', selector)}))"


def _or_zero(expr: str) -> str:
    """Show 0 per bucket while ``expr`` has no series yet (see module docstring)."""
    return f"{expr} or 0 * sum by (bucket) ({_rate('lpu_router_requests_admitted_total')})"


_UP_DOWN = [
    {
        "type": "value",
        "options": {
            "0": {"text": "DOWN", "color": "red", "index": 0},
            "1": {"text": "UP", "color": "green", "index": 1},
        },
    }
]


_ARTIFACT = [
    {"type": "value", "options": {"1": {"text": "serving", "color": "green", "index": 0}}},
]
"""The identity's info series is 1 per identity a replica reports."""
_CANARY = [
    {
        "type": "value",
        "options": {
            "-1": {"text": "none", "color": "text", "index": 0},
            "0": {"text": "ROLLED BACK", "color": "red", "index": 1},
            "1": {"text": "ACTIVE", "color": "green", "index": 2},
        },
    }
]


def _rows() -> tuple[Row, ...]:
    admitted = "lpu_router_requests_admitted_total"
    rejected = "lpu_router_requests_rejected_total"
    busy = "lpu_router_event_loop_busy_seconds_total"
    padding = "lpu_router_padding_tokens_total"
    spills = "lpu_router_spills_total"
    by_origin = (f'sum by (from) (label_replace({_rate(admitted)}, "from", "$1", "bucket",'
                 ' "(.*)"))')
    return (
        Row("Admission", (
            Panel(
                "Offered vs admitted vs rejected",
                "Requests per second per bucket. Offered = admitted + rejected. A gap between"
                " offered and admitted is load the admission controller shed to keep the SLO."
                " Bucket \"none\" holds requests refused before bucketing (malformed, unknown"
                " model); \"received\" counts every HTTP request by route.",
                "reqps",
                (
                    Target(f"sum by (bucket) ({_rate(admitted)} or {_rate(rejected)})",
                           "{{bucket}} offered"),
                    Target(f"sum by (bucket) ({_rate(admitted)})", "{{bucket}} admitted"),
                    Target(f"sum by (bucket) ({_rate(rejected)})", "{{bucket}} rejected"),
                    Target("sum by (route) (rate(lpu_router_requests_received_total"
                           f'{{instance=~"$instance"}}[{_RI}]))', "received {{route}}"),
                ),
            ),
            Panel(
                "Rejections by reason",
                "Refusals per second by bucket and reason. slo_ttft/slo_e2e/utilization/"
                "queue_full/concurrency mean no capacity in time; context_length/max_tokens_cap/"
                "invalid_request are client mistakes; tenant_* are quotas.",
                "reqps",
                (Target(f"sum by (bucket, reason) ({_rate(rejected)})", "{{bucket}} {{reason}}"),),
            ),
            Panel(
                "Shed ratio",
                "Share of offered requests refused for lack of capacity (solid) and for any"
                " reason (dashed), fleet-wide. Alert LpuRouterRejectionRatioHigh fires above"
                " 10% shed for 10 minutes.",
                "percentunit",
                (
                    Target(f"bucket:lpu_router_requests_shed:ratio_rate1m{{{_B}}}",
                           "{{bucket}} shed"),
                    Target(f"bucket:lpu_router_requests_rejected:ratio_rate1m{{{_B}}}",
                           "{{bucket}} all refusals"),
                ),
                max_value=1.0,
                dashed=".* all refusals$",
            ),
            Panel(
                "Outcomes of admitted requests",
                "Admitted requests per second by how they ended: completed, failed (upstream"
                " error after admission) or cancelled (client went away).",
                "reqps",
                (Target(f"sum by (bucket, outcome) ({_rate('lpu_router_requests_finished_total')})",
                        "{{bucket}} {{outcome}}"),),
            ),
        )),
        Row("Latency", (
            Panel(
                "TTFT p50 / p99 against the SLO",
                "Time to first token seen by clients, fleet-wide, with the SLO the admission"
                " controller enforces (dashed). p99 above the line for 5 minutes fires"
                " LpuRouterTtftP99AboveSlo.",
                "s",
                (
                    Target(f"bucket:lpu_router_ttft_seconds:p50_1m{{{_B}}}", "{{bucket}} p50"),
                    Target(f"bucket:lpu_router_ttft_seconds:p99_1m{{{_B}}}", "{{bucket}} p99"),
                    Target(f"bucket:lpu_router_ttft_slo_seconds:max{{{_B}}}", "{{bucket}} SLO"),
                ),
                dashed=".* SLO$",
            ),
            Panel(
                "End-to-end latency p50 / p99",
                "Arrival to last byte of completed requests at the selected router instances.",
                "s",
                (
                    Target(_quantile(0.5, "lpu_router_e2e_seconds"), "{{bucket}} p50"),
                    Target(_quantile(0.99, "lpu_router_e2e_seconds"), "{{bucket}} p99"),
                ),
            ),
            Panel(
                "Prediction error (actual - predicted TTFT)",
                "How far the first token came from the schedule's prediction. Near 0 on"
                " deterministic hardware; negative is normal under worst_case prediction (slots"
                " freed early). A positive median for 15 minutes fires"
                " LpuRouterPredictionErrorDrift.",
                "s",
                (
                    Target(f"bucket:lpu_router_prediction_error_seconds:p50_1m{{{_B}}}",
                           "{{bucket}} p50"),
                    Target(f"bucket:lpu_router_prediction_error_seconds:p99_1m{{{_B}}}",
                           "{{bucket}} p99"),
                ),
            ),
            Panel(
                "Predicted queueing wait p99",
                "Wait for a slot the admission controller predicted for admitted requests.",
                "s",
                (Target(_quantile(0.99, "lpu_router_predicted_wait_seconds"), "{{bucket}} p99"),),
            ),
        )),
        Row("Capacity", (
            Panel(
                "Utilization against target and knee",
                "Busy slot time over capacity in the sliding window (highest router reading),"
                " the configured target (dashed) and the knee 1 - 1/sqrt(slots) past which"
                " waits grow steeply (dashed). Above target for 10 minutes fires"
                " LpuRouterUtilizationAboveTarget.",
                "percentunit",
                (
                    Target(f"bucket:lpu_router_utilization:max{{{_B}}}", "{{bucket}} utilization"),
                    Target(f"bucket:lpu_router_utilization_target:max{{{_B}}}",
                           "{{bucket}} target"),
                    Target(f"bucket:lpu_router_utilization_knee:ratio{{{_B}}}", "{{bucket}} knee"),
                ),
                max_value=1.0,
                dashed=".* (target|knee)$",
            ),
            Panel(
                "Queue and in flight",
                "Admitted requests waiting for a slot (predicted), admitted requests not yet"
                " finished, and slots over healthy replicas.",
                "short",
                (
                    Target(f"sum by (bucket) (lpu_router_queue_depth{{{_R}}})",
                           "{{bucket}} queued"),
                    Target(f"sum by (bucket) (lpu_router_in_flight{{{_R}}})",
                           "{{bucket}} in flight"),
                    Target(f"max by (bucket) (lpu_router_slots{{{_R}}})", "{{bucket}} slots"),
                ),
                dashed=".* slots$",
            ),
            Panel(
                "Tokens per second",
                "Completion tokens relayed to clients and prompt tokens admitted, per second.",
                "short",
                (
                    Target(f"sum by (bucket) ({_rate('lpu_router_completion_tokens_total')})",
                           "{{bucket}} completion"),
                    Target(f"sum by (bucket) ({_rate('lpu_router_prompt_tokens_total')})",
                           "{{bucket}} prompt"),
                ),
            ),
            Panel(
                "Goodput",
                "Requests completed per second, fleet-wide. Under timeline admission each was"
                " predicted to meet its TTFT SLO; the TTFT panel shows whether it did.",
                "reqps",
                (Target(f"bucket:lpu_router_goodput:rate1m{{{_B}}}", "{{bucket}} completed"),),
            ),
            Panel(
                "Padding and spill",
                "Padding: the share of the compiled shapes' tokens that requests left unused,"
                " per bucket (lpu_router_padding_tokens_total over it plus the prompt and"
                " completion tokens; prompt padding is the shape's prompt part"
                " max_seq_len - max_output_tokens beyond the prompt, allowance padding the rest"
                " beyond the completion). Spill: requests admitted to a larger shape (to) per"
                " request admitted to their own smallest fitting bucket (from).",
                "percentunit",
                (
                    Target(f"sum by (bucket) ({_rate(padding)}) / (sum by (bucket)"
                           f" ({_rate(padding)}) + sum by (bucket)"
                           f" ({_rate('lpu_router_prompt_tokens_total')}) + sum by (bucket)"
                           f" ({_rate('lpu_router_completion_tokens_total')}))",
                           "{{bucket}} padding"),
                    # 0 per origin while nothing spilled (the module docstring's "or 0").
                    Target(f"sum by (from, to) (rate({spills}{{{_I}}}[{_RI}])) / on (from)"
                           f" group_left () {by_origin} or 0 * {by_origin}",
                           "spill {{from}} -> {{to}}"),
                ),
            ),
        )),
        Row("Backends", (
            Panel(
                "Backend health",
                "Per backend as the routers see it: UP is in rotation, DOWN is ejected (failed"
                " health checks or errors). DOWN for a minute fires LpuRouterBackendDown.",
                "none",
                (Target(f"min by (bucket, backend) (lpu_router_backend_up{{{_R}}})",
                        "{{bucket}} {{backend}}"),),
                kind="stat",
                mappings=_UP_DOWN,
            ),
            Panel(
                "Upstream errors, retries and clamps",
                "Per second: failures talking to backends by kind, requests retried on another"
                " replica before the first byte, and requests whose max_tokens was lowered.",
                "reqps",
                (
                    Target(_or_zero(f"sum by (bucket, kind) "
                                    f"({_rate('lpu_router_upstream_errors_total')})"),
                           "{{bucket}} error {{kind}}"),
                    Target(_or_zero(f"sum by (bucket) ({_rate('lpu_router_retries_total')})"),
                           "{{bucket}} retries"),
                    Target(_or_zero(f"sum by (bucket, reason) "
                                    f"({_rate('lpu_router_max_tokens_clamped_total')})"),
                           "{{bucket}} clamped {{reason}}"),
                ),
            ),
            Panel(
                "Scrape targets",
                "1 when Prometheus could scrape the router or emulator, 0 when not. 0 for two"
                " minutes fires LpuScrapeTargetDown.",
                "none",
                (Target('up{job=~".*lpu-(router|emulator).*"}', "{{job}} {{instance}}"),),
                kind="stat",
                mappings=_UP_DOWN,
            ),
        )),
        Row("Compiled artifacts", (
            Panel(
                "Artifact per replica",
                "What each replica reports it serves on /load (name, version, compiler;"
                " lpu_router_backend_artifact_info, digest in its labels): a mixed pool during"
                " a canary or a rollout shows two versions. A replica whose reported shape does"
                " not fit its bucket is not admitted to (LpuRouterBackendShapeMismatch; DOWN on"
                " Backend health).",
                "none",
                (Target(f"max by (bucket, backend, artifact, version, compiler, digest)"
                        f" (lpu_router_backend_artifact_info{{{_R}}})",
                        "{{bucket}} {{backend}}: {{artifact}} {{version}} ({{compiler}})"),),
                kind="stat",
                mappings=_ARTIFACT,
            ),
            Panel(
                "Observed over declared timings",
                "Per replica and timing (prefill, per token): the router's observed time (the"
                " median of its recent streams) over what the replica declares. 100 % runs as"
                " declared; beyond the dashed drift tolerance for 10 minutes fires"
                " LpuRouterArtifactDrift, and (after [admission] drift_min_samples) admission"
                " schedules that replica with the observed time.",
                "percentunit",
                (Target(f"max by (bucket, backend, timing)"
                        f" (lpu_router_backend_observed_seconds{{{_R}}}) / on (bucket, backend,"
                        f" timing) max by (bucket, backend, timing)"
                        f" (lpu_router_backend_declared_seconds{{{_R}}})",
                        "{{bucket}} {{backend}} {{timing}}"),
                 Target(f"1 + max(lpu_router_drift_tolerance{{{_I}}})", "drift tolerance +"),
                 Target(f"1 - max(lpu_router_drift_tolerance{{{_I}}})", "drift tolerance -")),
                dashed="drift tolerance.*",
            ),
            Panel(
                "Canary state",
                "Per bucket: ACTIVE while its canary share goes to the canary version, ROLLED"
                " BACK once a bound was crossed (LpuRouterCanaryRolledBack; GET /admin/buckets"
                " says why, POST .../canary/clear resumes it), none without a canary. The"
                " least over router instances: one rolled back shows.",
                "none",
                (Target(f"min by (bucket) (lpu_router_canary_state{{{_R}}}) or 0 * max by"
                        f" (bucket) (lpu_router_backend_shape_mismatch{{{_R}}}) - 1",
                        "{{bucket}}"),),
                kind="stat",
                mappings=_CANARY,
            ),
            Panel(
                "Rollout progress",
                "Per bucket: replicas the last rolling swap brought to its target (of the"
                " bucket's replicas, dashed) and 1 while one runs (POST"
                " /admin/buckets/{name}/rollout; GET /admin/buckets shows its phase).",
                "short",
                (Target(f"max by (bucket) (lpu_router_rollout_replicas_swapped{{{_R}}}) or 0 *"
                        f" max by (bucket) (lpu_router_backend_shape_mismatch{{{_R}}})",
                        "{{bucket}} swapped"),
                 Target(f"max by (bucket) (lpu_router_rollout_running{{{_R}}}) or 0 * max by"
                        f" (bucket) (lpu_router_backend_shape_mismatch{{{_R}}})",
                        "{{bucket}} running"),
                 Target(f"count by (bucket) (max by (bucket, backend)"
                        f" (lpu_router_backend_shape_mismatch{{{_R}}}))", "{{bucket}} replicas")),
                dashed=".* replicas",
            ),
        )),
        Row("Router processes", (
            Panel(
                "Event loop busy share per worker",
                "Share of the time each router's worker processes spend working (loop thread"
                " CPU per second over the workers): 1.0 is saturated. The HPA scales the router"
                " Deployment to keep the average over pods at its target (0.6 in deploy/k8s);"
                " above 0.85 for 10 minutes fires LpuRouterEventLoopSaturated. It measures the"
                " router only: backend saturation is the utilization panel and the refusals.",
                "percentunit",
                (Target(f"sum by (instance) ({_rate(busy, _I)})"
                        f" / sum by (instance) (lpu_router_event_loops{{{_I}}})",
                        "{{instance}} busy"),),
                max_value=1.0,
            ),
            Panel(
                "Event loop lag",
                "The largest delay of an event loop's wake-ups over the last second, worst worker"
                " per router: the wait a request arriving then had before the router looked at"
                " it. Spikes of 10-20 ms come from multi-megabyte bodies; a lag that stays up"
                " means the loops are saturated or starved of CPU.",
                "s",
                (Target(f"max by (instance) (lpu_router_event_loop_lag_seconds{{{_I}}})",
                        "{{instance}} lag"),),
            ),
            Panel(
                "Workers, restarts and the limits store",
                "Worker processes running per router, workers restarted after exiting unasked"
                " (per interval; more than 2 in 15 minutes fires LpuRouterWorkerRestarts), and"
                " whether the shared limits store (Redis) answers (0 with calls to it for a"
                " minute fires LpuRouterLimitStoreDown).",
                "short",
                (
                    Target(f"sum by (instance) (lpu_router_event_loops{{{_I}}})",
                           "{{instance}} workers"),
                    Target(f"sum by (instance) (increase(lpu_router_worker_restarts_total"
                           f"{{{_I}}}[{_RI}])) or 0 * sum by (instance)"
                           f" (lpu_router_event_loops{{{_I}}})", "{{instance}} restarts"),
                    Target(f"min by (instance) (lpu_router_limit_store_up{{{_I}}})",
                           "{{instance}} limits store up"),
                ),
            ),
        )),
        Row("Emulated backends (their own metrics)", (
            Panel(
                "Backend requests running / waiting",
                "Requests holding a slot and requests queued inside each backend replica.",
                "short",
                (
                    Target(f"sum by (bucket, instance) (vllm:num_requests_running{{{_B}}})",
                           "{{bucket}} {{instance}} running"),
                    Target(f"sum by (bucket, instance) (vllm:num_requests_waiting{{{_B}}})",
                           "{{bucket}} {{instance}} waiting"),
                ),
            ),
            Panel(
                "Backend slot utilization",
                "Share of slots busy as each backend reports it; compare with the router's"
                " utilization above.",
                "percentunit",
                (Target(f"avg by (bucket, instance) (lpu:slot_utilization{{{_B}}})",
                        "{{bucket}} {{instance}}"),),
                max_value=1.0,
            ),
            Panel(
                "Backend TTFT p99 and token lateness p99",
                "First-token latency measured inside the backends (queue + prefill) and how late"
                " tokens left against the compiled schedule.",
                "s",
                (
                    Target(_quantile(0.99, "vllm:time_to_first_token_seconds", _B),
                           "{{bucket}} TTFT p99"),
                    Target(_quantile(0.99, "lpu:token_delivery_lateness_seconds", _B),
                           "{{bucket}} lateness p99"),
                ),
            ),
            Panel(
                "Backend tokens per second",
                "Tokens generated per second by the backends (includes tokens of requests the"
                " client cancelled).",
                "short",
                (Target(f"sum by (bucket) ({_rate('vllm:generation_tokens_total', _B)})",
                        "{{bucket}} generated"),),
            ),
        )),
    )


def _field_config(panel: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "mappings": panel.mappings}
    if panel.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0,
                              "showPoints": "never", "spanNulls": False}
        defaults["min"] = 0 if panel.unit in ("reqps", "percentunit", "short") else None
    if panel.max_value is not None:
        defaults["max"] = panel.max_value
    defaults = {k: v for k, v in defaults.items() if v is not None}
    overrides: list[dict[str, Any]] = []
    if panel.dashed is not None:
        overrides.append({
            "matcher": {"id": "byRegexp", "options": f"/{panel.dashed}/"},
            "properties": [
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "custom.lineWidth", "value": 2},
            ],
        })
    return {"defaults": defaults, "overrides": overrides}


def _panel_json(panel: Panel, pid: int, x: int, y: int, width: int) -> dict[str, Any]:
    options: dict[str, Any]
    if panel.kind == "stat":
        options = {"colorMode": "background", "graphMode": "none", "textMode": "value_and_name",
                   "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    else:
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": _DS,
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": _field_config(panel),
        "options": options,
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": _DS, "expr": t.expr,
             "legendFormat": t.legend, "range": True}
            for i, t in enumerate(panel.targets)
        ],
    }


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": _DS,
        "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
        "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*", "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def build_dashboard() -> dict[str, Any]:
    """The dashboard as a JSON-ready mapping. Deterministic (no timestamps, stable ids)."""
    panels: list[dict[str, Any]] = []
    y = 0
    pid = 1
    for row in _rows():
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        # Two panels per line, except a row of three (backends) which uses thirds.
        width = 8 if len(row.panels) == 3 else 12
        per_line = 24 // width
        for i, panel in enumerate(row.panels):
            panels.append(_panel_json(panel, pid, (i % per_line) * width, y + (i // per_line) * 8,
                                      width))
            pid += 1
        y += 8 * -(-len(row.panels) // per_line)
    return {
        "uid": DASHBOARD_UID,
        "title": "LPU router",
        "description": "Admission, latency against the SLO, capacity and backend health of the"
                       " LPU admission-control router. Panels are explained in docs/deploy.md.",
        "tags": ["lpu-router"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "refresh": 1, "regex": "", "hide": 0,
             "current": {"selected": False, "text": "Prometheus", "value": DATASOURCE_UID}},
            _variable("bucket", "Bucket", "label_values(lpu_router_slots, bucket)"),
            _variable("instance", "Router instance", "label_values(lpu_router_slots, instance)"),
        ]},
        "panels": panels,
    }


def render() -> str:
    """The dashboard as the exact text committed to the repository."""
    return json.dumps(build_dashboard(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a committed copy differs")
    args = parser.parse_args(argv)
    text = render()
    stale = [p for p in OUTPUTS if not p.is_file() or p.read_text("utf-8") != text]
    if args.check:
        for p in stale:
            print(f"stale: {p} (run python3 deploy/grafana/dashboard.py)", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, "utf-8")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
