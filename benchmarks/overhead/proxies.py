"""The processes ``lpu-bench overhead`` measures: the canned upstream and the proxies in front.

Each is started with :func:`benchmarks.processes.start` and described by a :class:`Target`: its
base URL, its process, and whether its CPU is that of a process tree (nginx: master + worker).

* ``router``: ``lpu-router serve`` on a config of one bucket whose backend is the upstream,
  admission ``timeline`` with slots enough that nothing waits, the default log level (its access
  log goes to a file, as a real deployment's would);
* ``relay``: :mod:`benchmarks.overhead.relay_reference`;
* ``nginx``: ``proxy_pass`` with one worker, HTTP/1.1 keep-alive upstream, no buffering (SSE).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.overhead.canned_upstream import MODEL
from benchmarks.processes import Service, free_port, start, url_in

__all__ = ["NGINX", "PROXIES", "SLOTS", "Target", "nginx_path", "start_nginx",
           "start_relay", "start_router", "start_upstream"]

PROXIES = ("router", "relay", "nginx")
SLOTS = 64
"""Slots of the router's bucket (and of the upstream's /load): at most 32 requests are in
flight, so timeline admission never makes one wait or refuses one."""
NGINX = ("/usr/sbin/nginx", "nginx")


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    service: Service
    tree: bool = False
    """CPU is that of the process and its descendants."""

    def cpu_seconds(self) -> float:
        return self.service.cpu_seconds(tree=self.tree)


def start_upstream(workdir: Path) -> Target:
    service = start([sys.executable, "-m", "benchmarks.overhead.canned_upstream",
                     "--slots", str(SLOTS)], name="upstream", ready_lines=1,
                    stderr=workdir / "upstream.log")
    return Target("direct", url_in(service.lines[0]), service)


def start_relay(workdir: Path, upstream: str) -> Target:
    service = start([sys.executable, "-m", "benchmarks.overhead.relay_reference", upstream],
                    name="relay", ready_lines=1, stderr=workdir / "relay.log")
    return Target("relay", url_in(service.lines[0]), service)


def router_config(upstream: str) -> str:
    """One bucket on ``upstream``: a shape whose timings are tiny (the upstream answers at
    once) and that holds a 4 KB prompt; everything else at its default."""
    return f"""[server]
host = "127.0.0.1"
port = 0
[admission]
mode = "timeline"
[[buckets]]
name = "canned"
model = "{MODEL}"
backends = ["{upstream}"]
max_seq_len = 8192
max_output_tokens = 1024
slots = {SLOTS}
prefill_ms = 0.1
per_token_ms = 0.01
ttft_slo_s = 1.0
"""


def start_router(workdir: Path, upstream: str) -> Target:
    config = workdir / "router.toml"
    config.write_text(router_config(upstream))
    service = start([sys.executable, "-m", "router", "serve", str(config)], name="router",
                    ready_lines=1, stderr=workdir / "router.log")
    line = service.lines[0]
    if not line.startswith("lpu-router serving on "):
        service.stop()
        raise RuntimeError(f"the router did not start: {line!r}")
    # The tree: any helper process the router starts counts as its cost.
    return Target("router", url_in(line), service, tree=True)


def nginx_path() -> str | None:
    """The nginx binary, or None when it is not installed."""
    for candidate in NGINX:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def nginx_config(workdir: Path, port: int, upstream: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream backend {{ server {upstream.removeprefix("http://")}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def start_nginx(binary: str, workdir: Path, upstream: str) -> Target:
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, port, upstream))
    url = f"http://127.0.0.1:{port}"
    service = start([binary, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"],
                    name="nginx", ready_url=url + "/readyz", stderr=workdir / "nginx.log")
    return Target("nginx", url, service, tree=True)
