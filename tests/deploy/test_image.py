"""deploy/Dockerfile builds without BuildKit or a registry, and the image serves and drains.

Where a container engine answers, the image is built twice on a Debian base made locally
(``deploy/image/build-base.sh``: debootstrap + import, no registry): with Docker's classic builder
(``DOCKER_BUILDKIT=0``) and with buildah (vfs storage, chroot isolation; the result is pushed into
the Docker engine). Each image then runs as two containers on the host network, an emulator and
a router in front of it: ``/readyz`` turns 200, both health checks pass as the unprivileged user,
one completion succeeds and the accounting settles, and ``docker stop`` drains: a stream in
progress at SIGTERM runs to its end, the router logs the drain and exits 0.

Caching: the base's root filesystem is a tarball under ``$LPU_IMAGE_CACHE`` (default
``~/.cache/lpu-router/image``), and the base images stay in the engines' stores as
``lpu-base:bookworm`` (Docker) and ``localhost/lpu-base:bookworm`` (buildah): later runs reuse
them. Delete them to take newer Debian packages. Everything else the test makes (containers,
the images it built and their intermediate layers) is removed at the end.

Skips, each with its reason, where no engine answers (``docker info``), where buildah is not
installed (its case only), or where no base exists and none can be made (debootstrap needs
root). ``LPU_REQUIRE_CONTAINER_ENGINE=1`` (set by ``.ci/run`` once it has started dockerd)
turns those skips into failures. Nothing but 127.0.0.1 is contacted, except PyPI and the Debian
mirror by the builds.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from deploy_support import DEPLOY, REPO

BASE = "lpu-base:bookworm"
BUILD_BASE = DEPLOY / "image" / "build-base.sh"
LABEL = "lpu-router.test=image"
"""On every container this test starts, so a crashed run's leftovers can be found and removed."""
SITE_CAS = Path("/usr/local/share/ca-certificates")
"""The host's own CAs go into the base: pip in the build trusts the proxies the host trusts."""
MODEL = "llama-3.1-8b-instant"
ARTIFACT = "llama-3.1-8b-2k"
TIME_SCALE = 20.0
"""Emulator and router both: a 100-token stream lasts ~5 s, long past the SIGTERM sent at its
first token (the drain has it to wait for)."""
STREAM_TOKENS = 100
BUILD_TIMEOUT_S = 900.0
WAIT_S = 90.0
"""Bound of every wait for a container to come up (a loaded 2-core machine is slow)."""

pytestmark = pytest.mark.timeout(1800)


def _unavailable(reason: str) -> None:
    if os.environ.get("LPU_REQUIRE_CONTAINER_ENGINE") == "1":
        pytest.fail(f"LPU_REQUIRE_CONTAINER_ENGINE=1 but {reason}")
    pytest.skip(reason)


def _run(*cmd: str, timeout: float = 120.0, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                            cwd=REPO, env=None if env is None else {**os.environ, **env})
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def _buildah_env() -> dict[str, str]:
    # vfs and chroot: no overlay mounts and no user namespaces needed, as in a container or VM.
    return {"STORAGE_DRIVER": os.environ.get("STORAGE_DRIVER", "vfs"),
            "BUILDAH_ISOLATION": os.environ.get("BUILDAH_ISOLATION", "chroot")}


def _docker() -> None:
    """Skip (or fail) unless a Docker engine answers."""
    if shutil.which("docker") is None:
        _unavailable("no container engine: the docker CLI is not installed"
                     " (Debian: apt-get install docker.io)")
    info = _run("docker", "info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    if info.returncode != 0:
        first = (info.stderr.strip().splitlines() or ["no output"])[0]
        _unavailable(f"no container engine: `docker info` failed ({first}); start one with"
                     " `dockerd --storage-driver=vfs --iptables=false --bridge=none`")


def _leftovers() -> None:
    """Remove containers a previous, interrupted run of this test left behind."""
    ids = _run("docker", "ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
    if ids:
        _run("docker", "rm", "-f", *ids, check=False)


def _base_args() -> list[str]:
    args = ["--tag", BASE]
    for ca in sorted(SITE_CAS.glob("*.crt")):
        args += ["--ca-cert", str(ca)]
    return args


def _ensure_base(engine: str) -> str:
    """The local Debian base in ``engine``'s store (made once, then reused); its reference."""
    env = _buildah_env() if engine == "buildah" else None
    if engine == "docker":
        probe = _run("docker", "image", "inspect", BASE, check=False)
    else:
        probe = _run("buildah", "inspect", "--type", "image", BASE, check=False, env=env)
    if probe.returncode != 0:
        cache = Path(os.environ.get("LPU_IMAGE_CACHE",
                                    Path.home() / ".cache" / "lpu-router" / "image"))
        if not any(cache.glob("debian-bookworm-python3*.tar")):
            if os.geteuid() != 0:
                _unavailable(f"no base image {BASE} and none can be made: debootstrap needs root")
            if shutil.which("debootstrap") is None:
                _unavailable(f"no base image {BASE} and none can be made: debootstrap is not"
                             " installed (Debian: apt-get install debootstrap)")
        _run("bash", str(BUILD_BASE), "--engine", engine, "--cache", str(cache), *_base_args(),
             timeout=BUILD_TIMEOUT_S, env=env)
    return BASE if engine == "docker" else f"localhost/{BASE}"


def _docker_image_ids() -> set[str]:
    return set(_run("docker", "images", "-aq", "--no-trunc").stdout.split())


def _remove_docker_images(ids: set[str]) -> None:
    """Remove ``ids`` (images this test made). A parent goes only after its children, so
    repeat until a pass removes nothing."""
    left = set(ids)
    while left:
        gone = {i for i in left if _run("docker", "rmi", i, check=False).returncode == 0
                or _run("docker", "image", "inspect", i, check=False).returncode != 0}
        if not gone:
            return
        left -= gone


@dataclass(frozen=True)
class Image:
    builder: str
    tag: str


def _build_classic(tag: str, base: str) -> None:
    _run("docker", "build", "--force-rm", "--network=host", "--build-arg", f"BASE={base}",
         "-f", "deploy/Dockerfile", "-t", tag, ".", timeout=BUILD_TIMEOUT_S,
         env={"DOCKER_BUILDKIT": "0"})


def _build_buildah(tag: str, base: str) -> None:
    env = _buildah_env()
    local = f"localhost/{tag}"
    try:
        # --format docker: the OCI format has no HEALTHCHECK.
        _run("buildah", "bud", "--format", "docker", "--network", "host", "--build-arg",
             f"BASE={base}", "-f", "deploy/Dockerfile", "-t", local, ".",
             timeout=BUILD_TIMEOUT_S, env=env)
        _run("buildah", "push", local, f"docker-daemon:{tag}", timeout=BUILD_TIMEOUT_S, env=env)
    finally:
        _run("buildah", "rmi", local, check=False, env=env)


@pytest.fixture(scope="module", params=["classic", "buildah"])
def image(request: pytest.FixtureRequest) -> Iterator[Image]:
    """The project's image, built by ``request.param`` and present in the Docker engine."""
    _docker()
    _leftovers()
    builder: str = request.param
    if builder == "buildah" and shutil.which("buildah") is None:
        _unavailable("buildah is not installed (Debian: apt-get install buildah)")
    # The base first: it is kept, and what exists before the build is not removed after it.
    base = _ensure_base("docker" if builder == "classic" else "buildah")
    tag = f"lpu-router:image-test-{builder}"
    before = _docker_image_ids()
    try:
        (_build_classic if builder == "classic" else _build_buildah)(tag, base)
        yield Image(builder, tag)
    finally:
        _run("docker", "rmi", "-f", tag, check=False)
        _remove_docker_images(_docker_image_ids() - before)


def test_image_settings_survive_the_builder(image: Image) -> None:
    config = json.loads(_run("docker", "image", "inspect", "--format", "{{json .Config}}",
                             image.tag).stdout)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["lpu-router"]
    assert config["Cmd"] == ["serve", "/etc/lpu-router/router.toml"]
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python"]
    assert "LPU_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz" in config["Env"]


# --- the containers --------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    """Ports free on the host's loopback now (the containers share the host's network)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _router_toml(router_port: int, emulator_port: int) -> str:
    return f"""[server]
host = "127.0.0.1"
port = {router_port}

[[buckets]]
name = "short"
model = "{MODEL}"
artifact = "{ARTIFACT}"
time_scale = {TIME_SCALE}
backends = ["http://127.0.0.1:{emulator_port}"]
ttft_slo_s = 10.0
"""


@contextlib.contextmanager
def _container(name: str, image: str, *args: str, entrypoint: str | None = None,
               env: dict[str, str] | None = None, mounts: tuple[str, ...] = ()) -> Iterator[str]:
    """A detached container on the host network, removed (forcibly) on exit."""
    cmd = ["docker", "run", "-d", "--name", name, "--label", LABEL, "--network=host",
           # The image's own health command, checked every second instead of every 10.
           "--health-interval=1s", "--health-start-period=0s"]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    for mount in mounts:
        cmd += ["-v", mount]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    _run(*cmd, image, *args, timeout=120)
    try:
        yield name
    finally:
        _run("docker", "rm", "-f", name, check=False)


def _state(name: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(_run("docker", "inspect", "--format", "{{json .State}}",
                                            name).stdout)
    return state


def _logs(name: str) -> str:
    result = _run("docker", "logs", name, check=False)
    return result.stdout + result.stderr


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _wait(what: str, ready: Any, containers: tuple[str, ...]) -> None:
    """Poll ``ready()`` until true; fail with the containers' logs past :data:`WAIT_S`, or as
    soon as one of them has exited."""
    until = time.monotonic() + WAIT_S
    while True:
        with contextlib.suppress(OSError):
            if ready():
                return
        dead = [c for c in containers if not _state(c)["Running"]]
        if dead or time.monotonic() > until:
            logs = "\n".join(f"--- {c}\n{_logs(c)[-3000:]}" for c in containers)
            pytest.fail(f"{what}: not within {WAIT_S} s (exited: {dead})\n{logs}")
        time.sleep(0.2)


def _post(conn: http.client.HTTPConnection, body: dict[str, Any]) -> http.client.HTTPResponse:
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    return conn.getresponse()


def _load_invariant() -> ModuleType:
    """The settle invariant of the reliability tests (one definition, not a copy)."""
    path = REPO / "tests" / "stack.py"
    spec = importlib.util.spec_from_file_location("lpu_test_stack", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_image_serves_a_completion_and_drains_on_docker_stop(image: Image,
                                                             tmp_path: Path) -> None:
    emulator_port, router_port = _free_ports(2)
    config = tmp_path / "router.toml"
    config.write_text(_router_toml(router_port, emulator_port), "utf-8")
    config.chmod(0o644)  # read by uid 10001 inside the container
    suffix = f"{image.builder}-{os.getpid()}"
    with (
        _container(f"lpu-image-test-emulator-{suffix}", image.tag,
                   "--artifact", ARTIFACT, "--host", "127.0.0.1", "--port", str(emulator_port),
                   "--time-scale", str(TIME_SCALE), "--output-length", "fixed",
                   entrypoint="lpu-emulator",
                   env={"LPU_HEALTHCHECK_URL": f"http://127.0.0.1:{emulator_port}/healthz"}
                   ) as emulator,
        _container(f"lpu-image-test-router-{suffix}", image.tag,
                   env={"LPU_HEALTHCHECK_URL": f"http://127.0.0.1:{router_port}/healthz"},
                   mounts=(f"{config}:/etc/lpu-router/router.toml:ro",)) as router,
    ):
        both = (emulator, router)
        _wait("router /readyz 200", lambda: _get(router_port, "/readyz")[0] == 200, both)
        _wait("both health checks healthy",
              lambda: all(_state(c).get("Health", {}).get("Status") == "healthy" for c in both),
              both)

        conn = http.client.HTTPConnection("127.0.0.1", router_port, timeout=60)
        response = _post(conn, {"model": MODEL, "max_tokens": 5,
                                "messages": [{"role": "user", "content": "hello"}]})
        answer = json.loads(response.read())
        assert response.status == 200, answer
        assert answer["usage"]["completion_tokens"] == 5
        assert answer["choices"][0]["message"]["content"]
        conn.close()
        metrics = _get(router_port, "/metrics")[1]
        assert _load_invariant().invariant_problems(metrics) == []

        # A stream in progress when SIGTERM arrives: the drain lets it finish.
        conn = http.client.HTTPConnection("127.0.0.1", router_port, timeout=60)
        stream = _post(conn, {"model": MODEL, "max_tokens": STREAM_TOKENS, "stream": True,
                              "messages": [{"role": "user", "content": "hello"}]})
        assert stream.status == 200
        first = stream.readline()
        assert first.startswith(b"data: {"), first
        stop = subprocess.Popen(["docker", "stop", "--time", "60", router],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            rest = stream.read().decode()
        finally:
            _, stop_err = stop.communicate(timeout=120)
        conn.close()
        assert stop.returncode == 0, stop_err
        frames = [line[len("data: "):] for line in (first.decode() + rest).splitlines()
                  if line.startswith("data: ")]
        assert frames[-1] == "[DONE]"
        assert json.loads(frames[-2])["choices"][0]["finish_reason"] == "length"

        state = _state(router)
        logs = _logs(router)
        assert not state["Running"] and state["ExitCode"] == 0, logs[-3000:]
        assert (f"drained http://127.0.0.1:{router_port}: 1 in progress at start,"
                " 0 ended at the deadline, 0 cancelled") in logs, logs[-3000:]
