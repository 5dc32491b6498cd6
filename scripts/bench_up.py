#!/usr/bin/env python3
"""Benchmark: cold and warm `prefectstack up` to ready, and idle memory of the whole stack,
beside stock `prefect server start` (SQLite) measured in the same run on the same machine.

Each figure is the median of --reps runs (default 3). Everything binds to 127.0.0.1, every
wait is bounded, and every process started is stopped. Usage:

    python scripts/bench_up.py [--reps 3] [--idle-seconds 20] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_memory(pids: list[int]) -> tuple[float, float, int]:
    """RSS and PSS in MiB, and the process count, over the given process trees."""
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                procs[proc.pid] = proc
        except psutil.NoSuchProcess:
            continue
    rss = pss = 0
    for proc in procs.values():
        try:
            full = proc.memory_full_info()
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
        except psutil.Error:
            continue
    return rss / 2**20, pss / 2**20, len(procs)


def prefectstack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefectstack", *args], cwd=cwd, env=CLEAN_ENV,
        capture_output=True, text=True, timeout=900, check=True,
    )


def write_stack(root: Path) -> None:
    (root / "stack.yaml").write_text(
        "version: 1\nname: bench\nstate_dir: state\n"
        f"postgres: {{port: {free_port()}}}\nredis: {{port: {free_port()}}}\n"
        f"api: {{port: {free_port()}}}\n"
        f"workers: [{{name: worker-1, pool: bench, health_port: {free_port()}}}]\n"
    )


def stack_up(root: Path, idle_seconds: float, measure_memory: bool) -> dict[str, float]:
    start = time.monotonic()
    prefectstack("up", "--detach", cwd=root)
    ready = time.monotonic() - start
    result = {"ready_s": ready}
    if measure_memory:
        time.sleep(idle_seconds)
        status = json.loads(prefectstack("status", "--json", cwd=root).stdout)
        pids = [status["supervisor_pid"]] + [s["pid"] for s in status["services"] if s["pid"]]
        rss, pss, count = tree_memory(pids)
        result |= {"rss_mib": rss, "pss_mib": pss, "processes": count}
    prefectstack("down", cwd=root)
    return result


def stock_server(home: Path, idle_seconds: float, measure_memory: bool) -> dict[str, float]:
    port = free_port()
    env = CLEAN_ENV | {
        "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = start + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError("prefect server start exited")
            time.sleep(0.05)
        else:
            raise RuntimeError("prefect server start was not ready in 300 s")
        result = {"ready_s": time.monotonic() - start}
        if measure_memory:
            time.sleep(idle_seconds)
            rss, pss, count = tree_memory([proc.pid])
            result |= {"rss_mib": rss, "pss_mib": pss, "processes": count}
        return result
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="prefectstack-bench-"))
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in
                                               ("stack_cold", "stack_warm", "stock_cold",
                                                "stock_warm")}
    try:
        for rep in range(args.reps):
            root = work / f"stack-{rep}"
            root.mkdir()
            write_stack(root)
            runs["stack_cold"].append(stack_up(root, args.idle_seconds, measure_memory=True))
            runs["stack_warm"].append(stack_up(root, args.idle_seconds, measure_memory=False))
            home = work / f"stock-{rep}"
            runs["stock_cold"].append(stock_server(home, args.idle_seconds, measure_memory=True))
            runs["stock_warm"].append(stock_server(home, args.idle_seconds, measure_memory=False))
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report(runs, args)


def report(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    def fmt(key: str, field: str) -> str:
        values = ", ".join(f"{r[field]:.1f}" for r in runs[key])
        return f"{median(runs[key], field):.1f} [{values}]"

    print(f"\nmachine: {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"median of {args.reps} runs [individual runs]; idle memory {args.idle_seconds:.0f} s "
          "after ready\n")
    rows = [
        ("cold start to ready, s", fmt("stack_cold", "ready_s"), fmt("stock_cold", "ready_s")),
        ("warm start to ready, s", fmt("stack_warm", "ready_s"), fmt("stock_warm", "ready_s")),
        ("idle RSS, MiB", fmt("stack_cold", "rss_mib"), fmt("stock_cold", "rss_mib")),
        ("idle PSS, MiB", fmt("stack_cold", "pss_mib"), fmt("stock_cold", "pss_mib")),
        ("processes", fmt("stack_cold", "processes"), fmt("stock_cold", "processes")),
    ]
    print(f"{'metric':<26}{'prefectstack up':<34}{'prefect server start (SQLite)':<34}ratio")
    for label, ours, theirs in rows:
        ratio = float(ours.split()[0]) / float(theirs.split()[0])
        print(f"{label:<26}{ours:<34}{theirs:<34}{ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
