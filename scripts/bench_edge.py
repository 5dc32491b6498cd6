#!/usr/bin/env python3
"""Benchmark: what the edge (Caddy + TLS + forward_auth) costs per request.

Starts a stack, then drives `wrk` (Debian's package) on loopback against the same two
requests, directly to the API process and through the edge, in the same run:
  - GET /api/health            (anonymous through the edge too: probes need no credentials)
  - POST /api/flow_runs/filter (through the edge with a viewer API key, Bearer)
Prints requests/s and p50/p99 latency of each, and the edge/direct ratios. Every load loop
is bounded (`-d` seconds) and the stack is stopped at the end.

    python scripts/bench_edge.py [--seconds 15] [--connections 16] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
LUA_POST = """
wrk.method = "POST"
wrk.body = '{"limit": 10, "sort": "ID_DESC"}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefectstack(*args: str, cwd: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "prefectstack", *args], cwd=cwd, env=CLEAN_ENV,
        capture_output=True, text=True, timeout=900, check=True,
    ).stdout


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, seconds: int, connections: int, script: Path | None,
        headers: list[str]) -> dict[str, float]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for header in headers:
        argv += ["-H", header]
    if script:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60,
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99,
            "non_2xx": float(errors.group(1)) if errors else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("needs wrk: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="prefectstack-bench-edge-"))
    ports = {k: free_port() for k in ("pg", "redis", "api", "https", "http", "auth", "w")}
    (work / "stack.yaml").write_text(
        "version: 1\nname: bench\nstate_dir: state\n"
        f"postgres: {{port: {ports['pg']}}}\nredis: {{port: {ports['redis']}}}\n"
        f"api: {{port: {ports['api']}}}\nauth: {{port: {ports['auth']}}}\n"
        f"edge: {{https_port: {ports['https']}, http_port: {ports['http']}}}\n"
        f"workers: [{{name: worker-1, pool: bench, health_port: {ports['w']}}}]\n"
    )
    script = work / "post.lua"
    script.write_text(LUA_POST)
    direct = f"http://127.0.0.1:{ports['api']}"
    edge = f"https://localhost:{ports['https']}"
    results: dict[str, list[dict[str, float]]] = {}
    try:
        prefectstack("up", "--detach", cwd=work)
        key = prefectstack("keys", "create", "bench", "--role", "viewer",
                           cwd=work).strip().splitlines()[-1]
        auth = [f"Authorization: Bearer {key}"]
        cases = {
            "health direct": (f"{direct}/api/health", None, []),
            "health edge": (f"{edge}/api/health", None, []),
            "filter direct": (f"{direct}/api/flow_runs/filter", script, []),
            "filter edge": (f"{edge}/api/flow_runs/filter", script, auth),
        }
        for rep in range(args.reps):
            for name, (url, lua, headers) in cases.items():
                results.setdefault(name, []).append(
                    wrk(url, args.seconds, args.connections, lua, headers))
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
    finally:
        subprocess.run([sys.executable, "-m", "prefectstack", "down"], cwd=work, env=CLEAN_ENV,
                       capture_output=True, timeout=300, check=False)
        shutil.rmtree(work, ignore_errors=True)
    report(results, args)


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    def med(name: str, field: str) -> float:
        return statistics.median(r[field] for r in results[name])

    print(f"\nwrk -t2 -c{args.connections} -d{args.seconds}s on loopback, median of "
          f"{args.reps} runs; {os.cpu_count()} cores (wrk shares them with the stack)\n")
    print(f"{'request':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name in results:
        runs = ", ".join(f"{r['rps']:.0f}" for r in results[name])
        print(f"{name:<16}{med(name, 'rps'):>10.0f}{med(name, 'p50_ms'):>10.2f}"
              f"{med(name, 'p99_ms'):>10.2f}{med(name, 'non_2xx'):>10.0f}   [{runs}]")
    for what in ("health", "filter"):
        ratio = med(f"{what} edge", "rps") / med(f"{what} direct", "rps")
        lat = med(f"{what} edge", "p50_ms") - med(f"{what} direct", "p50_ms")
        print(f"{what}: edge/direct throughput {ratio:.2f}x, p50 +{lat:.2f} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
