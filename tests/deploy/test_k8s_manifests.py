"""Kubernetes manifests: rendered by kustomize, valid against the API schemas, consistent.

Core kinds are validated offline with ``kubernetes-validate`` (schemas ship in
the package). The Prometheus Operator kinds have no schema there, so they are
checked structurally: each monitor selects the objects it is meant to, on a
port those objects have. Rendering uses ``kubectl kustomize``, which never
contacts a cluster; without kubectl those tests skip and the base files are
validated one by one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from deploy_support import DEPLOY, load_yaml, metric_names, registry_names, rules

from router.config import parse_config
from router.metrics import make_metrics
from router.workers import DRAIN_MARGIN_S

K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30"
"""Validate against this Kubernetes API version (autoscaling/v2 and policy/v1 are GA)."""
OVERLAYS = {"base": K8S / "base", "prod": K8S / "overlays" / "prod"}


def _render(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: cannot run kustomize")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=60, check=False,
                            env={**os.environ, "KUBECONFIG": "/dev/null"})
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module", params=sorted(OVERLAYS), ids=sorted(OVERLAYS))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return _render(OVERLAYS[request.param])


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _validate_core(doc: dict[str, Any]) -> bool:
    """Validate against the schema; False when kubernetes-validate has none (a CRD kind)."""
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    return True


def test_base_files_validate_without_kustomize() -> None:
    kustomization = load_yaml(K8S / "base" / "kustomization.yaml")
    crds = set()
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / "base" / resource).read_text("utf-8")):
            if doc and not _validate_core(doc):
                crds.add(doc["kind"])
    assert crds == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_rendered_core_objects_validate(rendered: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in rendered if _validate_core(d)}
    assert kinds >= {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler", "StatefulSet"}


def test_router_deployment_probes_resources_and_security(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment", "lpu-router")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # /readyz fails while any one bucket is down: never a reason to drop every router.
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = _one(rendered, "PodDisruptionBudget", "lpu-router")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = _one(rendered, "HorizontalPodAutoscaler", "lpu-router")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "lpu-router"}
    # Saturation, not CPU: the test below checks the adapter rule that serves it.
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"]
    assert hpa["spec"]["minReplicas"] >= 2
    service = _one(rendered, "Service", "lpu-router")
    assert _matches(service["spec"]["selector"], labels)


def _router_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The TOML the router Deployment mounts, from its ConfigMap."""
    deployment = _one(docs, "Deployment", "lpu-router")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    config_map = _one(docs, "ConfigMap", volume["configMap"]["name"])
    assert container["args"] == ["serve", f"{mount['mountPath']}/router.toml"]
    return tomllib.loads(config_map["data"]["router.toml"])


def test_router_config_is_valid_and_names_real_backend_replicas(
    rendered: list[dict[str, Any]],
) -> None:
    raw = _router_config(rendered)
    config = parse_config(raw, "configmap:router.toml")
    assert config.server.host == "0.0.0.0"
    for bucket, table in zip(config.buckets, raw["buckets"], strict=True):
        for url in bucket.backends:
            parts = urlsplit(url)
            assert parts.hostname is not None
            pod, service = parts.hostname.split(".", 1)
            set_name, _, ordinal = pod.rpartition("-")
            sts = _one(rendered, "StatefulSet", set_name)
            assert int(ordinal) < sts["spec"]["replicas"], f"{url}: no such replica"
            assert sts["spec"]["serviceName"] == service
            svc = _one(rendered, "Service", service)
            assert svc["spec"]["clusterIP"] == "None", "per-replica DNS needs a headless Service"
            (container,) = sts["spec"]["template"]["spec"]["containers"]
            assert [p["containerPort"] for p in container["ports"]] == [parts.port]
            args = container["args"]
            assert args[args.index("--artifact") + 1] == table["artifact"]
            labels = sts["spec"]["template"]["metadata"]["labels"]
            assert labels["lpu-router/bucket"] == bucket.name


def _emulator_sets(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "StatefulSet"
            and d["metadata"]["labels"]["app.kubernetes.io/name"] == "lpu-emulator"]


def test_every_emulator_replica_is_in_the_router_config(rendered: list[dict[str, Any]]) -> None:
    raw = _router_config(rendered)
    listed = {url for table in raw["buckets"] for url in table["backends"]}
    for sts in _emulator_sets(rendered):
        name = sts["metadata"]["name"]
        for i in range(sts["spec"]["replicas"]):
            assert f"http://{name}-{i}.{sts['spec']['serviceName']}:8000" in listed


def test_service_monitor_scrapes_the_router(rendered: list[dict[str, Any]]) -> None:
    monitor = _one(rendered, "ServiceMonitor", "lpu-router")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = _one(rendered, "Service", "lpu-router")
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_pod_monitor_scrapes_every_emulator_with_its_bucket(
    rendered: list[dict[str, Any]],
) -> None:
    monitor = _one(rendered, "PodMonitor", "lpu-emulator")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    sets = _emulator_sets(rendered)
    assert sets
    for sts in sets:
        template = sts["spec"]["template"]
        assert _matches(selector, template["metadata"]["labels"])
        ports = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports
            (relabel,) = endpoint["relabelings"]
            assert relabel["targetLabel"] == "bucket"
            # The operator sanitises label names: "lpu-router/bucket" -> lpu_router_bucket.
            assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_lpu_router_bucket"]
            assert "lpu-router/bucket" in template["metadata"]["labels"]


def test_prometheus_rule_holds_exactly_the_rule_files(rendered: list[dict[str, Any]]) -> None:
    rule = _one(rendered, "PrometheusRule", "lpu-router")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    in_cluster = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert in_cluster == rules()


def test_prometheus_rule_file_is_generated_from_the_rule_files() -> None:
    path = K8S / "prometheus_rule.py"
    spec = importlib.util.spec_from_file_location("lpu_prometheus_rule", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.OUTPUT.read_text("utf-8") == module.render(), (
        "deploy/k8s/base/prometheus-rule.yaml is stale: run deploy/k8s/prometheus_rule.py"
    )


def test_grafana_dashboard_config_map_is_discoverable(rendered: list[dict[str, Any]]) -> None:
    config_map = _one(rendered, "ConfigMap", "lpu-router-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = (DEPLOY / "grafana" / "dashboards" / "lpu-router.json").read_text("utf-8")
    assert config_map["data"]["lpu-router-dashboard.json"] == dashboard


def test_router_runs_one_worker_per_cpu_of_its_request(rendered: list[dict[str, Any]]) -> None:
    config = parse_config(_router_config(rendered), "configmap:router.toml")
    deployment = _one(rendered, "Deployment", "lpu-router")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    cpu = str(container["resources"]["requests"]["cpu"])
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    assert config.server.workers == cores, f"{config.server.workers} workers, {cpu} CPU"
    assert config.server.workers >= 2


def test_the_grace_period_covers_the_pause_and_the_workers_drain(
    rendered: list[dict[str, Any]],
) -> None:
    config = parse_config(_router_config(rendered), "configmap:router.toml")
    pod = _one(rendered, "Deployment", "lpu-router")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    needed = float(command[1]) + config.server.drain_s + DRAIN_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_redis_statefulset_and_services(rendered: list[dict[str, Any]]) -> None:
    sts = _one(rendered, "StatefulSet", "lpu-redis")
    assert sts["spec"]["replicas"] == 1
    template = sts["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["image"].startswith("redis:7")
    args = container["args"]
    # No persistence (see redis.yaml): no snapshots, no append-only file.
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["redis-cli", "ping"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    labels = template["metadata"]["labels"]
    governing = _one(rendered, "Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    service = _one(rendered, "Service", "lpu-redis")
    assert service["spec"]["type"] == "ClusterIP"
    for svc in (governing, service):
        assert _matches(svc["spec"]["selector"], labels)
        ((port,),) = [svc["spec"]["ports"]]
        assert port["targetPort"] == "redis"
        assert [p["containerPort"] for p in container["ports"] if p["name"] == "redis"] == [6379]


def test_router_limits_use_the_redis_service(rendered: list[dict[str, Any]]) -> None:
    config = parse_config(_router_config(rendered), "configmap:router.toml")
    limits = config.limits
    assert str(limits.store) == "redis"
    assert limits.redis_url is not None
    parts = urlsplit(limits.redis_url)
    service = _one(rendered, "Service", str(parts.hostname))
    assert parts.port in [p["port"] for p in service["spec"]["ports"]]
    assert _matches(service["spec"]["selector"],
                    _one(rendered, "StatefulSet", "lpu-redis")["spec"]["template"]["metadata"]
                    ["labels"])


def _adapter_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    config_map = _one(docs, "ConfigMap", "lpu-router-adapter-rules")
    found: list[dict[str, Any]] = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    return found


def test_hpa_scales_on_a_pods_metric_the_adapter_rule_serves(
    rendered: list[dict[str, Any]],
) -> None:
    hpa = _one(rendered, "HorizontalPodAutoscaler", "lpu-router")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    target = metric["pods"]["target"]
    assert target["type"] == "AverageValue"
    # A busy share per worker: 0 < target < 1 (docs/deploy.md, "Autoscaling on saturation").
    value = str(target["averageValue"])
    share = int(value[:-1]) / 1000 if value.endswith("m") else float(value)
    assert 0 < share < 1
    served = {rule["name"]["as"]: rule for rule in _adapter_rules(rendered)}
    assert name in served, f"no prometheus-adapter rule serves {name}"
    rule = served[name]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}
    # Every series the rule reads is in the router's catalog.
    exported = registry_names(make_metrics().registry)
    query = rule["metricsQuery"].replace("<<.GroupBy>>", "pod").replace("<<.LabelMatchers>>", "")
    series = rule["seriesQuery"].split("{")[0].strip("'\"")
    assert metric_names(query) | {series} <= exported, sorted(metric_names(query) - exported)
