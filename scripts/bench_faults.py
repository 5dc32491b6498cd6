#!/usr/bin/env python3
"""Fault injection: kill -9 each part of a running stack under load, and record what it cost.

A stack with two API processes runs in a temporary directory. A client issues a bounded
load through the edge with an operator key (reads, and runs of the bundled `hello/hello`
deployment that the stack's worker executes). Each target is killed with SIGKILL in turn:
one API replica, the services process, the worker, the auth service, the edge, Redis,
PostgreSQL and, last, the supervisor itself (after which the script runs `up --detach`
again, as a user would). For each it records:

- time to recover: from the kill until `status` exits 0 with a new pid for the target;
- failed client requests in that window: first attempts, and after up to 5 retries (1 s
  apart, as Prefect's client retries);
- whether `status` told the truth: a sample showing the killed pid as ready after it died
  is a lie;
- processes left behind (supervisor kill: the old children still alive 10 s later).

At the end the load stops, every created run must reach a final state (Completed counted
apart from Crashed/Failed/Cancelled, and stuck runs named), `down` runs, and no process of
the stack may be left. Prints a table and writes JSON.

    python scripts/bench_faults.py [--json bench-faults.json] [--settle 10]

This is a benchmark, not a test: the figures depend on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
TARGETS = ("api-1", "services", "worker-1", "auth", "edge", "redis", "postgres", "supervisor")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_yaml(ports: dict[str, int]) -> str:
    return f"""\
version: 1
name: faults
state_dir: state
postgres:
  port: {ports["pg"]}
redis:
  port: {ports["redis"]}
api:
  port: {ports["api"]}
  replicas: 2
edge:
  https_port: {ports["https"]}
  http_port: {ports["http"]}
auth:
  port: {ports["auth"]}
workers:
  - name: worker-1
    pool: faults-pool
    limit: 4
    poll_seconds: 2
    health_port: {ports["worker"]}
examples:
  enabled: true
  interval_seconds: 3600
"""


def cli(root: Path, *args: str, check: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    result = subprocess.run([sys.executable, "-m", "prefectstack", *args], cwd=root, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise SystemExit(f"prefectstack {' '.join(args)} exited {result.returncode}:\n"
                         f"{result.stdout}\n{result.stderr}")
    return result


def status(root: Path) -> tuple[int, dict[str, Any]]:
    result = cli(root, "status", "--json", check=False, timeout=60)
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result.returncode, {}


def pid_of(data: dict[str, Any], target: str) -> int | None:
    if target == "supervisor":
        pid = data.get("supervisor_pid")
    else:
        pid = next((s.get("pid") for s in data.get("services", []) if s["name"] == target),
                   None)
    return int(pid) if pid else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Request:
    at: float
    kind: str
    ok_first: bool
    ok_final: bool


@dataclass
class Load:
    """A bounded client: one read every `interval`, a run of hello/hello every 4th tick."""

    base: str
    ca: str
    token: str
    interval: float = 0.5
    requests: list[Request] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, verify=self.ca, timeout=10,
                            headers={"Authorization": f"Basic {self.token}"})

    def call(self, client: httpx.Client, kind: str, method: str, path: str,
             body: dict[str, Any]) -> httpx.Response | None:
        at, first, response = time.monotonic(), None, None
        for attempt in range(6):
            try:
                response = client.request(method, path, json=body)
                ok = response.status_code < 400
            except httpx.HTTPError:
                ok, response = False, None
            if first is None:
                first = ok
            if ok:
                break
            if attempt < 5:
                time.sleep(1)
        self.requests.append(Request(at, kind, bool(first), ok))
        return response if response is not None and response.status_code < 400 else None

    def run(self, deployment_id: str) -> None:
        with self.client() as client:
            tick = 0
            while not self.stop.wait(self.interval):
                tick += 1
                self.call(client, "read", "POST", "/flow_runs/filter", {"limit": 5})
                if tick % 4 == 0:
                    created = self.call(client, "create", "POST",
                                        f"/deployments/{deployment_id}/create_flow_run", {})
                    if created is not None:
                        self.runs.append(created.json()["id"])

    def window(self, start: float, end: float) -> dict[str, int]:
        inside = [r for r in self.requests if start <= r.at <= end]
        return {"requests": len(inside),
                "failed_first_attempt": sum(not r.ok_first for r in inside),
                "failed_after_retries": sum(not r.ok_final for r in inside)}


def inject(root: Path, load: Load, target: str, settle: float, slow: float) -> dict[str, Any]:
    code, before = status(root)
    pid = pid_of(before, target)
    if code != 0 or pid is None:
        return {"target": target, "error": f"stack not healthy before the kill (status {code})"}
    children = []
    if target == "supervisor":
        for svc in before["services"]:
            if svc.get("pid"):
                children.append(svc["pid"])
                children += [c.pid for c in _children(svc["pid"])]
    start = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    lies, samples, left_behind, restarted_by_us = 0, 0, 0, False
    deadline = start + 300 * slow
    recovered = None
    if target == "supervisor":
        # The children die with it (PR_SET_PDEATHSIG); a user then starts the stack again.
        check = time.monotonic() + 10 * slow
        while time.monotonic() < check and any(alive(p) for p in children):
            time.sleep(0.2)
        left_behind = sum(alive(p) for p in children)
        code, data = status(root)
        samples += 1
        lies += code == 0
        if code == 6:  # stale: `down` cleans up first, as status says
            cli(root, "down", check=False)
        cli(root, "up", "--detach")
        restarted_by_us = True
    while time.monotonic() < deadline:
        code, data = status(root)
        samples += 1
        now_pid = pid_of(data, target)
        if now_pid == pid and not alive(pid):
            unit: dict[str, Any] = next(
                (s for s in data.get("services", []) if s["name"] == target), {})
            lies += unit.get("state") == "ready" and unit.get("healthy") is not False
        if code == 0 and now_pid not in (None, pid):
            recovered = time.monotonic() - start
            break
        time.sleep(0.2)
    end = time.monotonic()
    time.sleep(settle)  # steady load before the next fault
    return {"target": target, "recovered_s": None if recovered is None else round(recovered, 1),
            "status_samples": samples, "status_lies": lies, "left_behind": left_behind,
            "restarted_by_user": restarted_by_us,
            **load.window(start, end + settle)}


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stack_processes(root: Path) -> list[str]:
    """Processes that still belong to the stack: anything whose command line or working
    directory is inside its directory."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        with_root = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        if str(root) in with_root and proc.pid != os.getpid():
            found.append(f"{proc.pid} {' '.join((proc.info['cmdline'] or [])[:4])}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench-faults.json", help="where to write figures")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds of steady load after each recovery")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stack dir")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    root.chmod(0o711)  # run as root, the stack's unprivileged account must reach its state
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker", "https", "http", "auth")}
    (root / "stack.yaml").write_text(stack_yaml(ports))
    load_before = os.getloadavg()
    started = time.monotonic()
    cli(root, "up", "--detach")
    startup = time.monotonic() - started
    slow = max(1.0, startup / 50)
    key = cli(root, "keys", "create", "faults", "--role", "operator").stdout.strip()
    token = base64.b64encode(f"operator:{key.splitlines()[-1]}".encode()).decode()
    load = Load(f"https://localhost:{ports['https']}/api", str(root / "state" / "ca.crt"),
                token)
    with load.client() as client:
        deployment = client.get("/deployments/name/hello/hello")
        deployment.raise_for_status()
    thread = threading.Thread(target=load.run, args=(deployment.json()["id"],), daemon=True)
    thread.start()
    rows = []
    try:
        time.sleep(args.settle)
        for target in TARGETS:
            print(f"killing {target} ...", flush=True)
            rows.append(inject(root, load, target, args.settle, slow))
            print(f"  {rows[-1]}", flush=True)
    finally:
        load.stop.set()
        thread.join(timeout=60)
    outcome = runs_outcome(load, slow)
    cli(root, "down", check=False)
    left = stack_processes(root)
    report = {"machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                          "loadavg_after": os.getloadavg(), "startup_s": round(startup, 1)},
              "faults": rows, "runs": outcome, "left_after_down": left}
    Path(args.json).write_text(json.dumps(report, indent=2))
    print_table(report)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0 if not left and not outcome["stuck"] else 1


def runs_outcome(load: Load, slow: float) -> dict[str, Any]:
    with load.client() as client:
        deadline = time.monotonic() + 300 * slow
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {}
            for start in range(0, len(load.runs), 100):
                chunk = load.runs[start:start + 100]
                found = client.post("/flow_runs/filter", json={
                    "flow_runs": {"id": {"any_": chunk}}, "limit": 100}).json()
                states |= {r["id"]: r["state"]["type"] for r in found}
            if all(states.get(r) in FINAL for r in load.runs):
                break
            time.sleep(2)
    counts: dict[str, int] = {}
    for run in load.runs:
        state = states.get(run, "MISSING")
        counts[state] = counts.get(state, 0) + 1
    stuck = [r for r in load.runs if states.get(r) not in FINAL]
    return {"created": len(load.runs), "states": counts, "stuck": stuck}


def print_table(report: dict[str, Any]) -> None:
    head = ("killed", "recovered s", "requests", "failed 1st", "failed final", "status lies",
            "left behind")
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in report["faults"]:
        if "error" in row:
            print(f"| {row['target']} | {row['error']} |")
            continue
        rec = "never" if row["recovered_s"] is None else str(row["recovered_s"])
        print(f"| {row['target']} | {rec} | {row['requests']} | "
              f"{row['failed_first_attempt']} | {row['failed_after_retries']} | "
              f"{row['status_lies']} | {row['left_behind']} |")
    runs = report["runs"]
    print(f"\nruns created: {runs['created']}, final states: {runs['states']}, "
          f"stuck: {len(runs['stuck'])}")
    print(f"processes left after down: {len(report['left_after_down'])}")
    print(f"machine: {report['machine']}")


if __name__ == "__main__":
    sys.exit(main())
