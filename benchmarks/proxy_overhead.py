"""What the router costs: the same closed-loop load sent directly to an emulator, through the
router (admission off) and through nginx (when installed), non-streaming and streaming.

    python3 -m benchmarks.proxy_overhead [--rounds 3] [--workers 32] [--requests 4000]
                                         [--prompt-chars 0] [--out FILE]

The emulator runs at a tiny time scale (service time ~0.1 ms), so the proxies are the
bottleneck. The emulator, the router and nginx each run in their own process (the router as
``python3 -m router serve`` on a temporary config, nginx with ``proxy_pass``,
``proxy_buffering off``, HTTP/1.1 keep-alive upstream); the load generator runs here on uvloop.
Each target gets a warm-up, then, in each of ``--rounds`` rounds, ``--requests`` requests from
``--workers`` concurrent workers, the targets one after the other (so a busy spell of a shared
machine hits every target of a round alike).

Reported per round and target: throughput (requests/s), p50 and p99 latency (full response) and
the CPU the serving process tree used per request (``/proc``, Linux; the emulator's for
``direct``, the proxy's own otherwise). The summary gives, per mode and proxy, the median over
the rounds and the spread (min-max) of the throughput ratio to direct (of the same round), the
added p50 and p99 latency, and the proxy's CPU per request, the figure that depends least on
what else the machine runs. On a 2-core machine all processes share the cores, so throughput
figures are indicative.

``--prompt-chars N`` pads the prompt to N characters of prose (default: one short sentence), to
see what counting a real prompt costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np

from benchmarks.machine import describe

__all__ = ["Figures", "main", "measure", "summarize"]

ARTIFACT = "llama-3.1-8b-2k"
MODEL = "llama-3.1-8b-instant"
TIME_SCALE = 0.001
NGINX = "/usr/sbin/nginx"
_PROSE = ("The router counts each prompt, picks the smallest compiled shape that fits it, asks"
          " the admission controller whether the request can meet its deadline, and relays the"
          " answer of the backend to the client byte for byte. ")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Figures:
    target: str
    mode: str
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    round: int = 0
    cpu_ms_per_request: float | None = None
    """CPU (user + system) of the serving process tree per request; None off Linux."""


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its descendants (nginx's workers); None when
    ``/proc`` cannot tell."""
    try:
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    except OSError:
        return None
    if pid not in stats:
        return None
    tree, total, grew = {pid}, 0, True
    while grew:
        grew = False
        for child, (parent, _) in stats.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    for member in tree:
        total += stats[member][1]
    return total / _TICK


def _prompt(chars: int) -> str:
    if chars <= 0:
        return "Benchmark the proxy."
    return (_PROSE * (chars // len(_PROSE) + 1))[:chars]


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
                  target: str, prompt: str = "Benchmark the proxy.", pid: int | None = None,
                  round_: int = 0) -> Figures:
    """Closed loop: ``workers`` tasks send ``requests`` requests in total, one at a time each;
    ``pid``: the serving process, whose CPU per request is reported."""
    body = json.dumps({"model": MODEL, "max_tokens": max_tokens, "stream": stream,
                       "messages": [{"role": "user", "content": prompt}]})
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

        cpu_before = _cpu_s(pid) if pid is not None else None
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - start
        cpu_after = _cpu_s(pid) if pid is not None else None
    lat = np.array(latencies) * 1e3 if latencies else np.array([float("nan")])
    cpu = None if cpu_before is None or cpu_after is None else \
        (cpu_after - cpu_before) / requests * 1e3
    return Figures(target, "stream" if stream else "json", requests, errors,
                   len(latencies) / elapsed, float(np.percentile(lat, 50)),
                   float(np.percentile(lat, 99)), round_, cpu)


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


async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    procs: list[subprocess.Popen[bytes]] = []
    prompt = _prompt(args.prompt_chars)
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
        targets = {"direct": (emulator, procs[0].pid),
                   "router": (f"http://127.0.0.1:{router_port}", procs[1].pid)}
        if shutil.which(NGINX):
            nginx_port = _free_port()
            conf = _nginx_conf(workdir, nginx_port, emulator)
            procs.append(_start([NGINX, "-p", str(workdir), "-c", str(conf), "-g",
                                 "daemon off;"], workdir, "nginx"))
            targets["nginx"] = (f"http://127.0.0.1:{nginx_port}", procs[-1].pid)
        for url, _ in targets.values():
            await _wait_ready(url)
        results: list[Figures] = []
        for stream in (False, True):
            for target, (url, _) in targets.items():
                await measure(url, stream=stream, workers=args.workers, requests=args.warmup,
                              max_tokens=args.max_tokens, target=target, prompt=prompt)
            for round_ in range(args.rounds):
                for target, (url, pid) in targets.items():
                    fig = await measure(url, stream=stream, workers=args.workers,
                                        requests=args.requests, max_tokens=args.max_tokens,
                                        target=target, prompt=prompt, pid=pid, round_=round_)
                    results.append(fig)
                    cpu = "" if fig.cpu_ms_per_request is None else \
                        f"  cpu {fig.cpu_ms_per_request:5.3f} ms/req"
                    print(f"  {fig.mode:6s} round {round_} {target:7s} {fig.rps:8.0f} req/s"
                          f"  p50 {fig.p50_ms:6.2f} ms  p99 {fig.p99_ms:6.2f} ms{cpu}"
                          f"  errors {fig.errors}", flush=True)
    finally:
        for p in reversed(procs):
            _stop(p)
    return {"machine": describe(), "workers": args.workers, "requests": args.requests,
            "rounds": args.rounds, "max_tokens": args.max_tokens,
            "prompt_chars": len(prompt), "time_scale": TIME_SCALE,
            "results": [asdict(f) for f in results], "summary": summarize(results)}


def _spread(values: list[float], digits: int = 3) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


def summarize(results: list[Figures]) -> list[dict[str, object]]:
    """Per mode and proxy: median and min-max over rounds of the throughput ratio to direct
    (same round), the added p50 / p99 (ms) and the proxy's CPU per request (ms)."""
    summary: list[dict[str, object]] = []
    for mode in ("json", "stream"):
        direct = {f.round: f for f in results if f.mode == mode and f.target == "direct"}
        proxies = sorted({f.target for f in results if f.mode == mode} - {"direct"},
                         key=lambda t: (t != "router", t))
        for proxy in proxies:
            rows = [f for f in results if f.mode == mode and f.target == proxy
                    and f.round in direct]
            if not rows:
                continue
            row: dict[str, object] = {
                "mode": mode, "proxy": proxy, "rounds": len(rows),
                "throughput_ratio": _spread([f.rps / direct[f.round].rps for f in rows]),
                "added_p50_ms": _spread([f.p50_ms - direct[f.round].p50_ms for f in rows]),
                "added_p99_ms": _spread([f.p99_ms - direct[f.round].p99_ms for f in rows]),
            }
            cpus = [f.cpu_ms_per_request for f in rows if f.cpu_ms_per_request is not None]
            if cpus:
                row["cpu_ms_per_request"] = _spread(cpus)
            backend = [d.cpu_ms_per_request for d in direct.values()
                       if d.cpu_ms_per_request is not None]
            if backend:
                row["direct_emulator_cpu_ms_per_request"] = _spread(backend)
            summary.append(row)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.proxy_overhead",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3,
                   help="measured rounds (every target once per round and mode)")
    p.add_argument("--workers", type=int, default=32, help="concurrent closed-loop workers")
    p.add_argument("--requests", type=int, default=4000,
                   help="measured requests per target and round")
    p.add_argument("--warmup", type=int, default=300, help="warm-up requests per target")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per reply")
    p.add_argument("--prompt-chars", type=int, default=0,
                   help="pad the prompt to this many characters of prose (0: one sentence)")
    p.add_argument("--out", default="benchmarks/results/proxy_overhead.json",
                   help="where to write the JSON figures ('' to skip)")
    args = p.parse_args(argv)
    m = describe()
    print(f"proxy overhead: {m['nproc']} cpus ({m['cpu']}), {args.workers} workers,"
          f" {args.requests} requests per target and round, {args.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory(prefix="lpu-proxy-bench-") as tmp:
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            report = asyncio.run(_run(args, Path(tmp)))
        else:
            report = uvloop.run(_run(args, Path(tmp)))
    print("median [min-max] over rounds:")
    for row in report["summary"]:  # type: ignore[attr-defined]
        line = (f"  {row['mode']:6s} {row['proxy']:6s} throughput {_fmt(row['throughput_ratio'])}"
                f"  added p50 {_fmt(row['added_p50_ms'], '+.2f')} ms"
                f"  p99 {_fmt(row['added_p99_ms'], '+.2f')} ms")
        if "cpu_ms_per_request" in row:
            line += f"  cpu {_fmt(row['cpu_ms_per_request'])} ms/req"
        print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


def _fmt(spread: dict[str, float], spec: str = ".2f") -> str:
    return (f"{spread['median']:{spec}} [{spread['min']:{spec}} to {spread['max']:{spec}}]")


if __name__ == "__main__":
    sys.exit(main())
