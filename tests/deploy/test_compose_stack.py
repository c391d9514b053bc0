"""The compose stack and its image: parses, and every reference in it points at something real.

Nothing is built or started here (``test_image.py`` builds and runs the image
where a container engine answers). ``docker compose config`` (or a v2
``docker-compose``) validates the file against the Compose schema when a
client is installed; the structural checks
below always run: services, mounts, dependencies, the Prometheus targets and
the router config agree with each other, and the Dockerfile builds only from
files the build context sends.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from deploy_support import DEPLOY, REPO, load_yaml

from router.config import load_config
from router.workers import DRAIN_MARGIN_S

COMPOSE_FILE = DEPLOY / "compose.yaml"
COMPOSE: dict[str, Any] = load_yaml(COMPOSE_FILE)
SERVICES: dict[str, Any] = COMPOSE["services"]
_TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _compose_command() -> list[str] | None:
    """A Compose v2 client that can run ``config`` without a daemon, if one is installed."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        probe = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True,
                               timeout=30, check=False)
        # v1 (Python) docker-compose predates the Compose spec's top-level "name".
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2"):
            return cmd
    return None


def test_compose_config_with_a_compose_client() -> None:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no Docker Compose v2 client installed (the structural checks still run)")
    result = subprocess.run([*cmd, "-f", str(COMPOSE_FILE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_compose_top_level_and_services_are_well_formed() -> None:
    extra = {k for k in COMPOSE if not k.startswith("x-")} - _TOP_LEVEL
    assert not extra, f"unknown top-level keys {extra}"
    assert set(SERVICES) == {"emulator-short", "emulator-medium", "emulator-long", "redis",
                             "router", "prometheus", "grafana"}
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            assert spec["condition"] in _CONDITIONS
            if spec["condition"] == "service_healthy":
                dep_service = SERVICES[dep]
                # Our image declares a HEALTHCHECK; third-party services declare one here.
                assert "healthcheck" in dep_service or "build" in dep_service, dep


def test_compose_mounts_exist() -> None:
    for name, service in SERVICES.items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in COMPOSE.get("volumes", {}), f"{name}: undeclared volume {source}"


def _router_config_path() -> Path:
    (mount,) = [v for v in SERVICES["router"]["volumes"] if v.endswith("router.toml:ro")]
    return DEPLOY / str(mount).split(":")[0]


def test_router_config_names_the_emulator_services_and_their_artifacts() -> None:
    path = _router_config_path()
    config = load_config(path)
    raw = tomllib.loads(path.read_text("utf-8"))
    assert config.server.host == "0.0.0.0"
    assert SERVICES["router"]["ports"] == [f"{config.server.port}:{config.server.port}"]
    for bucket, table in zip(config.buckets, raw["buckets"], strict=True):
        (url,) = bucket.backends
        parts = urlsplit(url)
        service = SERVICES[str(parts.hostname)]
        assert service["entrypoint"] == ["lpu-emulator"]
        args = service["command"]
        assert args[args.index("--artifact") + 1] == table["artifact"]
        assert int(args[args.index("--port") + 1]) == parts.port
        assert args[args.index("--host") + 1] == "0.0.0.0"
        assert service["environment"]["LPU_HEALTHCHECK_URL"].endswith(f":{parts.port}/healthz")


def test_redis_runs_without_persistence_and_the_router_waits_for_it() -> None:
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert SERVICES["router"]["depends_on"]["redis"] == {"condition": "service_healthy"}
    # Only the router talks to it: on the compose network, never published on the host.
    assert "ports" not in redis and redis["expose"] == ["6379"]


def test_router_counts_its_limits_in_the_redis_service_with_two_workers() -> None:
    config = load_config(_router_config_path())
    assert config.server.workers == 2
    assert str(config.limits.store) == "redis" and config.limits.redis_url is not None
    parts = urlsplit(config.limits.redis_url)
    assert parts.hostname in SERVICES and SERVICES[str(parts.hostname)]["image"].startswith("redis")
    assert str(parts.port) in SERVICES[str(parts.hostname)]["expose"]


def test_docker_stop_waits_for_the_workers_drain() -> None:
    config = load_config(_router_config_path())
    grace = str(SERVICES["router"]["stop_grace_period"])
    assert grace.endswith("s")
    assert float(grace[:-1]) >= config.server.drain_s + DRAIN_MARGIN_S


def test_prometheus_scrapes_every_lpu_service_with_its_bucket() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    router_targets = [t for sc in jobs["lpu-router"]["static_configs"] for t in sc["targets"]]
    assert router_targets == ["router:8080"]
    buckets = {b.name for b in load_config(_router_config_path()).buckets}
    seen = set()
    for static in jobs["lpu-emulator"]["static_configs"]:
        (target,) = static["targets"]
        host = target.split(":")[0]
        assert host in SERVICES
        assert SERVICES[host]["command"][-1] == target.split(":")[1]
        seen.add(static["labels"]["bucket"])
        assert host == f"emulator-{static['labels']['bucket']}"
    assert seen == buckets


def test_grafana_is_provisioned_with_the_datasource_and_dashboard() -> None:
    grafana = SERVICES["grafana"]
    mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in grafana["volumes"]
              if v.startswith(".")}
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["uid"] == "lpu-prometheus"
    assert urlsplit(datasource["url"]).hostname == "prometheus"
    (provider,) = load_yaml(provisioning / "dashboards" / "lpu-router.yml")["providers"]
    dashboards = mounts[provider["options"]["path"]]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (dashboards / Path(home).name).is_file()


# --- The image --------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text("utf-8").splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            lines.append((word.upper(), rest))
            pending = ""
    return lines


def _dockerignored(path: str) -> bool:
    """Whether the repository-root .dockerignore keeps ``path`` out of the build context."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        hit = pattern == "**" or fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/")
        if hit:
            ignored = not negate
    return ignored


def test_dockerfile_is_slim_non_root_with_healthcheck() -> None:
    instructions = _dockerfile()
    # Both stages on one base, python:3.11-slim unless --build-arg BASE= names another
    # (an offline Debian base, docs/deploy.md); tests/deploy/test_image.py builds it.
    assert instructions[0] == ("ARG", "BASE=python:3.11-slim")
    froms = [args for op, args in instructions if op == "FROM"]
    assert froms == ["${BASE} AS build", "${BASE}"]
    # Nothing only BuildKit understands: the classic builder and buildah build it too.
    text = (DEPLOY / "Dockerfile").read_text("utf-8")
    assert "# syntax=" not in text and "--mount" not in text
    start = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    build_stage, final_stage = instructions[:start], instructions[start:]
    ops = dict(final_stage)
    assert ops["USER"].split(":")[0] not in {"0", "root"}
    assert "python" in ops["HEALTHCHECK"] and "/healthz" in ops["ENV"]
    assert ops["ENTRYPOINT"] == '["lpu-router"]'
    assert ops["CMD"] == '["serve", "/etc/lpu-router/router.toml"]'
    installs = [args for op, args in build_stage if op == "RUN" and "pip install" in args]
    assert installs and all("[dev]" not in a and "--no-cache-dir" in a for a in installs)
    assert not [args for op, args in final_stage if op == "RUN" and "pip" in args]
    assert ("COPY", "--from=build /opt/lpu /opt/lpu") in final_stage


def test_dockerfile_copies_only_what_the_context_sends() -> None:
    for op, args in _dockerfile():
        if op != "COPY" or args.startswith("--from"):
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert not _dockerignored(source), f"{source} is excluded by .dockerignore"
    assert _dockerignored("tests/unit") and _dockerignored(".git")
    assert _dockerignored("router/__pycache__/x.pyc")


ROUTER_CONFIGS = [
    DEPLOY / "compose" / "router.toml",
    DEPLOY / "k8s" / "base" / "router.toml",
    DEPLOY / "k8s" / "overlays" / "prod" / "router.toml",
]


@pytest.mark.parametrize("path", ROUTER_CONFIGS,
                         ids=[str(p.relative_to(DEPLOY)) for p in ROUTER_CONFIGS])
def test_router_configs_pass_lpu_router_check(path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "router", "--check", str(path)],
                            capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
