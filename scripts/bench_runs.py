#!/usr/bin/env python3
"""Benchmark: a burst of flow runs on one stack, (a) the stock process worker against (b) the
warm worker (`workers[].warm: true`), side by side.

Starts one stack (a temp dir, free ports) with two workers, `stock` on pool `bench-stock` and
`warm` on pool `bench-warm` (same limit, same poll interval), deploys one trivial flow to
both pools and, for each worker in turn, creates --runs flow runs at once through the edge
and waits until all are final. Reports per worker:

- burst_s: first submit -> all runs final (observed by polling the API);
- lag p50/p95: each run's start_time - expected_start_time (from the API);
- cpu_s_per_run: CPU of the worker's process tree (worker, forkserver, flow-run children,
  reaped children included: utime+stime+cutime+cstime from /proc) over the burst, per run;
- child_uss_mb: private (unshared) RSS of flow-run processes sampled while they ran
  (psutil memory_full_info().uss), median and max;
- failures: runs not Completed.

Prints a table and writes JSON. Usage:

    python scripts/bench_runs.py [--runs 50] [--limit 8] [--json runs.json] [--keep]

Everything binds to 127.0.0.1, every wait is bounded, and the stack is stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
TICKS = os.sysconf("SC_CLK_TCK")
WORKERS = ("stock", "warm")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
FLOW = '''
from prefect import flow

@flow
def noop() -> int:
    return 1
'''
DEPLOY = """
from prefect import flow
for pool in ("bench-stock", "bench-warm"):
    flow.from_source(source={src!r}, entrypoint="bench_flow.py:noop").deploy(
        name=pool, work_pool_name=pool, build=False, push=False)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_stack(root: Path, limit: int, poll: float) -> dict[str, int]:
    ports = {k: free_port() for k in ("pg", "redis", "api", "https", "http", "auth", "w1", "w2")}
    (root / "stack.yaml").write_text(f"""\
version: 1
name: benchruns
state_dir: state
postgres:
  port: {ports["pg"]}
redis:
  port: {ports["redis"]}
api:
  port: {ports["api"]}
edge:
  https_port: {ports["https"]}
  http_port: {ports["http"]}
auth:
  port: {ports["auth"]}
workers:
  - name: stock
    pool: bench-stock
    limit: {limit}
    poll_seconds: {poll:g}
    health_port: {ports["w1"]}
  - name: warm
    pool: bench-warm
    warm: true
    limit: {limit}
    poll_seconds: {poll:g}
    health_port: {ports["w2"]}
examples:
  enabled: false
""")
    (root / "bench_flow.py").write_text(FLOW)
    return ports


def prefectstack(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefectstack", *args], cwd=cwd, env=CLEAN_ENV,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def tree_cpu_ticks(pid: int) -> dict[int, int]:
    """utime+stime+cutime+cstime of every live process of pid's tree, keyed by pid: a
    reaped child's time is in its parent's cutime/cstime."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(int(entry))):
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        fields = stat_fields(current)
        if fields is None:
            continue
        out[current] = sum(int(f) for f in fields[11:15])
        todo.extend(children.get(current, []))
    return out


def cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    # A process that ended during the burst is in its parent's cutime (after); one that
    # started during it counts from zero.
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / TICKS


class UssSampler(threading.Thread):
    """Private RSS of the flow-run processes under a worker, sampled while they run."""

    def __init__(self, worker_pid: int) -> None:
        super().__init__(daemon=True)
        self.worker_pid = worker_pid
        self.samples: dict[int, float] = {}  # pid -> max uss (MB)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                worker = psutil.Process(self.worker_pid)
                for proc in worker.children(recursive=True):
                    try:
                        cmd = " ".join(proc.cmdline())
                        if "warm.forkserver" in cmd and proc.ppid() == self.worker_pid:
                            continue  # the warm parent itself, not a run
                        uss = proc.memory_full_info().uss / 2**20
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
                    self.samples[proc.pid] = max(uss, self.samples.get(proc.pid, 0.0))
            except psutil.NoSuchProcess:
                return
            self.stop.wait(0.25)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _time(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


class Api:
    def __init__(self, root: Path, base: str, key: str) -> None:
        token = base64.b64encode(f"bench:{key}".encode()).decode()
        self.client = httpx.Client(
            base_url=f"{base}/api", timeout=60, headers={"Authorization": f"Basic {token}"},
            verify=ssl.create_default_context(cafile=str(root / "state" / "ca.crt")))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.client.post(path, json=body).raise_for_status()
        return response.json() if response.content else None

    def get(self, path: str) -> Any:
        return self.client.get(path).raise_for_status().json()

    def runs(self, ids: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for i in range(0, len(ids), 200):
            found += self.post("/flow_runs/filter", {
                "flow_runs": {"id": {"any_": ids[i:i + 200]}}, "limit": 200})
        return found


def burst(api: Api, worker: str, worker_pid: int, runs: int, timeout: float) -> dict[str, Any]:
    dep = api.get(f"/deployments/name/noop/bench-{worker}")
    sampler = UssSampler(worker_pid)
    cpu_before = tree_cpu_ticks(worker_pid)
    sampler.start()
    t0 = time.time()
    ids = [api.post(f"/deployments/{dep['id']}/create_flow_run", {})["id"]
           for _ in range(runs)]
    submitted = time.time() - t0
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = api.runs(ids)
        if len(found) == runs and all(r["state"]["type"] in FINAL for r in found):
            break
        time.sleep(0.5)
    elapsed = time.time() - t0
    cpu_after = tree_cpu_ticks(worker_pid)
    sampler.stop.set()
    sampler.join(5)
    lags = [s - e for r in found
            if (s := _time(r.get("start_time"))) and (e := _time(r.get("expected_start_time")))]
    ends = [e for r in found if (e := _time(r.get("end_time")))]
    states: dict[str, int] = {}
    for r in found:
        states[r["state"]["type"]] = states.get(r["state"]["type"], 0) + 1
    uss = list(sampler.samples.values())
    cpu = cpu_seconds(cpu_before, cpu_after)
    return {
        "runs": runs,
        "submit_s": round(submitted, 2),
        "burst_s": round(elapsed, 1),
        "last_end_after_submit_s": round(max(ends) - t0, 1) if ends else None,
        "lag_p50_s": round(percentile(lags, 0.5), 2),
        "lag_p95_s": round(percentile(lags, 0.95), 2),
        "cpu_s_worker_tree": round(cpu, 1),
        "cpu_s_per_run": round(cpu / runs, 3),
        "child_uss_mb_median": round(statistics.median(uss), 1) if uss else None,
        "child_uss_mb_max": round(max(uss), 1) if uss else None,
        "children_sampled": len(uss),
        "states": states,
        "failures": runs - states.get("COMPLETED", 0),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        ("submit -> all final (s)", "burst_s"),
        ("lag p50 (s)", "lag_p50_s"),
        ("lag p95 (s)", "lag_p95_s"),
        ("worker-tree CPU-s per run", "cpu_s_per_run"),
        ("child private RSS median (MB)", "child_uss_mb_median"),
        ("child private RSS max (MB)", "child_uss_mb_max"),
        ("failures", "failures"),
    ]
    lines = [f"{'':<32}{'(a) stock':>12}{'(b) warm':>12}{'b/a':>8}"]
    for label, key in rows:
        a, b = results["stock"].get(key), results["warm"].get(key)
        ratio = f"{b / a:.2f}" if isinstance(a, (int, float)) and isinstance(
            b, (int, float)) and a else "-"
        lines.append(f"{label:<32}{a!s:>12}{b!s:>12}{ratio:>8}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--limit", type=int, default=8, help="each worker's --limit")
    parser.add_argument("--poll", type=float, default=2, help="workers' poll_seconds")
    parser.add_argument("--timeout", type=float, default=1200, help="per burst")
    parser.add_argument("--json", type=Path, default=Path("bench_runs.json"))
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    root.chmod(0o755)  # run as root, the stack's services run as its own account
    ports = write_stack(root, args.limit, args.poll)
    load_before = os.getloadavg()
    try:
        up = prefectstack("up", "--detach", cwd=root)
        if up.returncode != 0:
            raise SystemExit(f"up failed:\n{up.stdout}\n{up.stderr}")
        key = prefectstack("keys", "create", "bench", "--role", "developer",
                           cwd=root).stdout.strip().splitlines()[-1]
        base = f"https://localhost:{ports['https']}"
        env = CLEAN_ENV | {
            "PREFECT_API_URL": f"{base}/api", "PREFECT_API_AUTH_STRING": f"bench:{key}",
            "PREFECT_API_SSL_CERT_FILE": str(root / "state" / "ca.crt"),
            "PREFECT_HOME": str(root / "home"), "PYTHONPATH": str(root),
        }
        subprocess.run([sys.executable, "-c", DEPLOY.format(src=str(root))], cwd=root,
                       env=env, check=True, capture_output=True, timeout=600)
        state = json.loads((root / "state" / "state.json").read_text())
        pids = {s["name"]: s["pid"] for s in state["services"] if s.get("pid")}
        api = Api(root, base, key)
        results: dict[str, dict[str, Any]] = {}
        for worker in WORKERS:
            time.sleep(10)  # let the previous burst's stragglers (events, logs) settle
            load = os.getloadavg()
            results[worker] = burst(api, worker, pids[worker], args.runs, args.timeout)
            results[worker]["loadavg_at_start"] = [round(x, 2) for x in load]
    finally:
        if not args.keep:
            prefectstack("down", cwd=root, timeout=300)
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "runs": args.runs, "limit": args.limit, "poll_seconds": args.poll,
        "stack_dir": str(root), "results": results,
    }
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(table(results))
    print(f"\nload average before {out['machine']['loadavg_before']}, "
          f"after {out['machine']['loadavg_after']}; JSON: {args.json}")


if __name__ == "__main__":
    main()
