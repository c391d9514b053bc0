"""What the router costs: the same closed-loop load sent directly to an emulator, through the
router (admission off) and through nginx (when installed), non-streaming and streaming.

    python3 -m benchmarks.proxy_overhead [--workers 32] [--requests 4000] [--out FILE]

The emulator runs at a tiny time scale (service time ~0.1 ms), so the proxies are the
bottleneck. The emulator, the router and nginx each run in their own process (the router as
``python3 -m router serve`` on a temporary config, nginx with ``proxy_pass``,
``proxy_buffering off``, HTTP/1.1 keep-alive upstream); the load generator runs here on uvloop.
Each target gets a warm-up, then ``--requests`` requests from ``--workers`` concurrent workers.
Reported per mode: throughput (requests/s), p50 and p99 latency (full response), the throughput
ratio to direct, and the latency added over direct. On a 2-core machine all processes share the
cores, so figures are indicative; compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np

__all__ = ["Figures", "main", "measure"]

ARTIFACT = "llama-3.1-8b-2k"
MODEL = "llama-3.1-8b-instant"
TIME_SCALE = 0.001
NGINX = "/usr/sbin/nginx"


@dataclass(frozen=True)
class Figures:
    target: str
    mode: str
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout_s}s")


async def measure(url: str, *, stream: bool, workers: int, requests: int, max_tokens: int,
                  target: str) -> Figures:
    """Closed loop: ``workers`` tasks send ``requests`` requests in total, one at a time each."""
    body = json.dumps({"model": MODEL, "max_tokens": max_tokens, "stream": stream,
                       "messages": [{"role": "user", "content": "Benchmark the proxy."}]})
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    left = requests
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url + "/v1/chat/completions", data=body,
                                            headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1e3 if latencies else np.array([float("nan")])
    return Figures(target, "stream" if stream else "json", requests, errors,
                   len(latencies) / elapsed, float(np.percentile(lat, 50)),
                   float(np.percentile(lat, 99)))


def _nginx_conf(workdir: Path, port: int, upstream: str) -> Path:
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = f"""{user}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
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
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


def _router_conf(workdir: Path, port: int, upstream: str) -> Path:
    path = workdir / "router.toml"
    path.write_text(f"""[server]
port = {port}
[admission]
mode = "off"
[health]
interval_s = 0.5
[[buckets]]
name = "short"
model = "{MODEL}"
artifact = "{ARTIFACT}"
time_scale = {TIME_SCALE}
backends = ["{upstream}"]
""")
    return path


def _start(cmd: list[str], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        emu_port = _free_port()
        emulator = f"http://127.0.0.1:{emu_port}"
        procs.append(_start([sys.executable, "-m", "lpu_emulator", "--artifact", ARTIFACT,
                             "--port", str(emu_port), "--time-scale", str(TIME_SCALE),
                             "--tick-ms", "0"], workdir, "emulator"))
        router_port = _free_port()
        procs.append(_start([sys.executable, "-m", "router", "--log-level", "WARNING", "serve",
                             str(_router_conf(workdir, router_port, emulator))],
                            workdir, "router"))
        targets = {"direct": emulator, "router": f"http://127.0.0.1:{router_port}"}
        if shutil.which(NGINX):
            nginx_port = _free_port()
            conf = _nginx_conf(workdir, nginx_port, emulator)
            procs.append(_start([NGINX, "-p", str(workdir), "-c", str(conf), "-g",
                                 "daemon off;"], workdir, "nginx"))
            targets["nginx"] = f"http://127.0.0.1:{nginx_port}"
        for url in targets.values():
            await _wait_ready(url)
        results: list[Figures] = []
        for stream in (False, True):
            for target, url in targets.items():
                await measure(url, stream=stream, workers=args.workers, requests=args.warmup,
                              max_tokens=args.max_tokens, target=target)
                fig = await measure(url, stream=stream, workers=args.workers,
                                    requests=args.requests, max_tokens=args.max_tokens,
                                    target=target)
                results.append(fig)
                print(f"  {fig.mode:6s} {target:7s} {fig.rps:8.0f} req/s  p50 {fig.p50_ms:6.2f} ms"
                      f"  p99 {fig.p99_ms:6.2f} ms  errors {fig.errors}", flush=True)
    finally:
        for p in reversed(procs):
            _stop(p)
    summary = []
    for mode in ("json", "stream"):
        direct = next(f for f in results if f.mode == mode and f.target == "direct")
        for f in results:
            if f.mode == mode and f.target != "direct":
                summary.append({
                    "mode": mode, "proxy": f.target,
                    "throughput_ratio": round(f.rps / direct.rps, 3),
                    "added_p50_ms": round(f.p50_ms - direct.p50_ms, 3),
                    "added_p99_ms": round(f.p99_ms - direct.p99_ms, 3),
                })
    return {"machine": _machine(), "workers": args.workers, "requests": args.requests,
            "max_tokens": args.max_tokens, "time_scale": TIME_SCALE,
            "results": [asdict(f) for f in results], "summary": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.proxy_overhead",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workers", type=int, default=32, help="concurrent closed-loop workers")
    p.add_argument("--requests", type=int, default=4000, help="measured requests per target")
    p.add_argument("--warmup", type=int, default=300, help="warm-up requests per target")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per reply")
    p.add_argument("--out", default="benchmarks/results/proxy_overhead.json",
                   help="where to write the JSON figures ('' to skip)")
    args = p.parse_args(argv)
    m = _machine()
    print(f"proxy overhead: {m['nproc']} cpus ({m['cpu']}), {args.workers} workers,"
          f" {args.requests} requests per target", flush=True)
    with tempfile.TemporaryDirectory(prefix="lpu-proxy-bench-") as tmp:
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            report = asyncio.run(_run(args, Path(tmp)))
        else:
            report = uvloop.run(_run(args, Path(tmp)))
    for row in report["summary"]:  # type: ignore[attr-defined]
        print(f"  {row['mode']:6s} {row['proxy']:6s} throughput x{row['throughput_ratio']:.2f}"
              f"  added p50 {row['added_p50_ms']:+.2f} ms  p99 {row['added_p99_ms']:+.2f} ms")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
