#!/usr/bin/env python3
"""Benchmark (issue 12): flow-run throughput of three configurations, side by side in one run.

- (a) stock `prefect server start` (SQLite, its own PREFECT_HOME in a temp dir, with its
  services) and the stock process worker (`prefect worker start --type process`);
- (b) a prefectstack stack (`prefectstack up --detach`, a temp dir) with the stock process
  worker (a stack worker with `warm: false`);
- (c) the same stack with the warm worker (`warm: true`).

(b) and (c) share one stack with two workers on two pools (`bench-b`, `bench-c`); they are
measured one after the other, never at the same time. (a) runs first, alone, and its server
is stopped before the stack starts. Every worker gets the same --limit and poll interval
(PREFECT_WORKER_QUERY_SECONDS = --poll); PREFECT_WORKER_PREFETCH_SECONDS stays at Prefect's
default (10 s) everywhere.

Each configuration runs one trivial flow (`return 1`, deployed from a local path):

1. burst: --runs flow runs created at once (--create-threads concurrent creations), then
   wait until all are final;
2. sustained: --sustained runs, offered closed-loop: the script keeps --window runs
   (default 2 x --limit) outstanding and creates a new one as soon as one is final, so the
   rate is as fast as the configuration completes them. runs/min = Completed runs x 60 /
   (last end_time - first creation).

Creations through the stack go through the edge (HTTPS, an API key); for (a) straight to
the server. Reported per configuration and phase:

- burst_s: first creation -> last run final (the runs' end_time from the API);
- lag p50/p95: start_time - expected_start_time;
- runs_per_min (sustained);
- CPU-s per run, split into the worker tree (worker, forkserver, flow-run children; reaped
  children included: utime+stime+cutime+cstime from /proc) and the server processes ((a):
  the `prefect server start` tree; (b)/(c): the stack's api/services/postgres/redis/edge/
  auth trees; the stack's reconcile and backup daemons are reported apart as "side"), per
  created run; and the same net of what those processes burn idle (--idle seconds
  measured with no run before each configuration, times the phase's duration);
- child private RSS (psutil uss) of flow-run processes, sampled while they run;
- failures: creations that failed (after the retries Prefect's client makes; the retries
  are counted apart), runs final but not Completed, runs lost (created but
  not final by the deadline);
- (c) the warm parent's (forkserver's) RSS/USS before the first run and after the last.

Prints a table with the ratios c/a and c/b, and writes JSON. Usage:

    python scripts/bench_runs.py [--runs 50] [--sustained 500] [--configs a,b,c]
        [--limit 8] [--poll 2] [--json bench_runs.json] [--port-range 27600-29999]

Everything binds to 127.0.0.1, every wait is bounded, and every server, worker and stack
is stopped at the end (also on Ctrl-C, SIGTERM or an error).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import random
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
TICKS = os.sysconf("SC_CLK_TCK")
CONFIGS = ("a", "b", "c")
LABELS = {"a": "(a) stock server + stock worker", "b": "(b) stack + stock worker",
          "c": "(c) stack + warm worker"}
CREATE_RETRIES = 5
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
FLOW = '''
from prefect import flow

@flow
def noop() -> int:
    return 1
'''
DEPLOY = """
from prefect import flow
for pool in {pools!r}:
    flow.from_source(source={src!r}, entrypoint="bench_flow.py:noop").deploy(
        name=pool, work_pool_name=pool, build=False, push=False)
"""
STACK_WORKERS = {"b": ("stock", False), "c": ("warm", True)}
# Stack daemons beside the server proper (not in "server" CPU; reported as "side").
SIDE = ("reconcile", "backup")


# --- ports, processes, /proc ------------------------------------------------------------

class Ports:
    """Free loopback ports, from a range (--port-range) or from the kernel."""

    def __init__(self, spec: str | None) -> None:
        self.taken: set[int] = set()
        self.ranged = bool(spec)
        self.candidates: list[int] = []
        if spec:
            lo, hi = (int(x) for x in spec.split("-"))
            self.candidates = list(range(lo, hi + 1))
            random.shuffle(self.candidates)

    def take(self) -> int:
        while True:
            if self.ranged and not self.candidates:
                raise SystemExit("no free port left in --port-range")
            port = self.candidates.pop() if self.ranged else 0
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                found = int(sock.getsockname()[1])
            if found not in self.taken:
                self.taken.add(found)
                return found


def stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def tree_cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime+stime+cutime+cstime of every live process of the pids' trees, keyed by pid: a
    reaped child's time is in its parent's cutime/cstime."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(int(entry))):
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: dict[int, int] = {}
    todo = list(pids)
    while todo:
        current = todo.pop()
        fields = stat_fields(current)
        if fields is None or current in out:
            continue
        out[current] = sum(int(f) for f in fields[11:15])
        todo.extend(children.get(current, []))
    return out


def cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    # A process that ended in between is in its parent's cutime (after); one that started
    # in between counts from zero.
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / TICKS


class CpuMeter:
    """CPU seconds of named process trees between start() and stop()."""

    def __init__(self, trees: dict[str, int]) -> None:
        self.trees = trees
        self.before: dict[str, dict[int, int]] = {}

    def start(self) -> None:
        self.before = {name: tree_cpu_ticks([pid]) for name, pid in self.trees.items()}

    def stop(self) -> dict[str, float]:
        return {name: round(cpu_seconds(self.before[name], tree_cpu_ticks([pid])), 2)
                for name, pid in self.trees.items()}


def is_forkserver(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return "warm.forkserver" in " ".join(proc.cmdline())
    return False


def forkserver_of(worker_pid: int) -> psutil.Process | None:
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(worker_pid).children():
            if is_forkserver(proc):
                return proc
    return None


def memory_mb(proc: psutil.Process | None) -> dict[str, float] | None:
    if proc is None:
        return None
    try:
        info = proc.memory_full_info()
    except psutil.Error:
        return None
    return {"rss_mb": round(info.rss / 2**20, 1), "uss_mb": round(info.uss / 2**20, 1)}


class UssSampler(threading.Thread):
    """Private RSS of the flow-run processes under a worker, sampled while they run."""

    def __init__(self, worker_pid: int) -> None:
        super().__init__(daemon=True)
        self.worker_pid = worker_pid
        self.samples: dict[int, float] = {}  # pid -> max uss (MB)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                worker = psutil.Process(self.worker_pid)
                for proc in worker.children(recursive=True):
                    try:
                        if is_forkserver(proc) and proc.ppid() == self.worker_pid:
                            continue  # the warm parent itself, not a run
                        uss = proc.memory_full_info().uss / 2**20
                    except psutil.Error:
                        continue
                    self.samples[proc.pid] = max(uss, self.samples.get(proc.pid, 0.0))
            except psutil.Error:
                return
            self.stopping.wait(0.25)


def run_children(worker_pid: int) -> int:
    with contextlib.suppress(psutil.Error):
        return sum(1 for p in psutil.Process(worker_pid).children(recursive=True)
                   if not is_forkserver(p))
    return 0


def settle(worker_pids: list[int], limit_s: float = 90) -> None:
    """Let the previous phase's stragglers (children exiting, events, logs) finish: wait
    (bounded) until no worker has a flow-run child, then a few quiet seconds."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and any(run_children(p) for p in worker_pids):
        time.sleep(0.5)
    time.sleep(5)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM a process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _time(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")


# --- the API ------------------------------------------------------------------------------

class Api:
    def __init__(self, base: str, key: str | None = None, ca: Path | None = None) -> None:
        headers = {}
        if key:
            token = base64.b64encode(f"bench:{key}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca)) if ca else True)
        self.client = httpx.Client(base_url=f"{base}/api", timeout=60, headers=headers,
                                   verify=verify,
                                   limits=httpx.Limits(max_connections=32))

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


# --- one phase ----------------------------------------------------------------------------

class Phase:
    """Creates runs of one deployment and follows them until final (or the deadline)."""

    def __init__(self, api: Api, deployment_id: str, timeout: float) -> None:
        self.api = api
        self.dep = deployment_id
        self.deadline = time.monotonic() + timeout
        self.ids: list[str] = []
        self.create_errors: list[str] = []
        self.create_retries = 0
        self.final: dict[str, dict[str, Any]] = {}
        self.last_seen: dict[str, dict[str, Any]] = {}

    def create(self) -> None:
        """One creation, retried like Prefect's own client does (PREFECT_CLIENT_MAX_RETRIES,
        5: on 429/502/503 and connection errors, exponential backoff with jitter); it
        fails only when the retries are spent."""
        for attempt in range(CREATE_RETRIES + 1):
            try:
                run = self.api.post(f"/deployments/{self.dep}/create_flow_run", {})
            except httpx.HTTPError as exc:
                status, detail = None, ""
                if isinstance(exc, httpx.HTTPStatusError):
                    status, detail = exc.response.status_code, exc.response.text[:200]
                error = f"{type(exc).__name__}: {status or exc} {detail}".strip()
                if attempt < CREATE_RETRIES and status in (None, 429, 502, 503):
                    self.create_retries += 1
                    time.sleep(min(2 ** attempt, 30) * random.uniform(1, 1.2))
                    continue
                self.create_errors.append(error)
                return
            self.ids.append(run["id"])
            return

    def outstanding(self) -> list[str]:
        return [i for i in self.ids if i not in self.final]

    def poll(self) -> None:
        todo = self.outstanding()
        if not todo:
            return
        try:
            found = self.api.runs(todo)
        except httpx.HTTPError:
            return  # a slow or busy API: poll again
        for run in found:
            self.last_seen[run["id"]] = run
            if run["state"]["type"] in FINAL:
                self.final[run["id"]] = run

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def report(self, t0: float, cpu: dict[str, float], worker_key: str,
               uss: list[float]) -> dict[str, Any]:
        runs = list(self.final.values())
        lags = [s - e for r in runs
                if (s := _time(r.get("start_time"))) and (e := _time(r.get("expected_start_time")))]
        ends = [e for r in runs if (e := _time(r.get("end_time")))]
        states: dict[str, int] = {}
        for r in runs:
            states[r["state"]["type"]] = states.get(r["state"]["type"], 0) + 1
        lost = len(self.ids) - len(runs)
        if lost:
            states["NOT FINAL"] = lost
        completed = states.get("COMPLETED", 0)
        created = len(self.ids)
        worker_cpu = cpu.get(worker_key, 0.0)
        server_cpu = sum(v for k, v in cpu.items() if k != worker_key and k not in SIDE)
        side_cpu = sum(v for k, v in cpu.items() if k in SIDE)
        per = max(created, 1)
        span = (max(ends) - t0) if ends else None
        return {
            "created": created,
            "creation_failures": len(self.create_errors),
            "creation_retries": self.create_retries,
            "creation_errors": self.create_errors[:5],
            "not_completed": len(runs) - completed,
            "lost": lost,
            "failures": len(self.create_errors) + len(runs) - completed + lost,
            "states": states,
            "first_create_to_last_end_s": round(span, 1) if span is not None else None,
            "runs_per_min": round(completed * 60 / span, 1) if span else None,
            "lag_p50_s": _round(percentile(lags, 0.5), 2),
            "lag_p95_s": _round(percentile(lags, 0.95), 2),
            "cpu_s": cpu,
            "cpu_s_per_run_worker": round(worker_cpu / per, 3),
            "cpu_s_per_run_server": round(server_cpu / per, 3),
            "cpu_s_per_run_side": round(side_cpu / per, 3),
            "child_uss_mb_median": round(statistics.median(uss), 1) if uss else None,
            "child_uss_mb_max": round(max(uss), 1) if uss else None,
            "children_sampled": len(uss),
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def measure(api: Api, deployment_id: str, worker_pid: int, trees: dict[str, int],
            mode: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    """One phase: `burst` creates `count` runs at once; `sustained` keeps args.window runs
    outstanding until `count` are created. Waits (bounded by args.timeout) until all are
    final."""
    phase = Phase(api, deployment_id, args.timeout)
    meter = CpuMeter({"worker": worker_pid, **trees})
    sampler = UssSampler(worker_pid)
    meter.start()
    sampler.start()
    load = os.getloadavg()
    t0 = time.time()
    if mode == "burst":
        with ThreadPoolExecutor(args.create_threads) as pool:
            for _ in range(count):
                pool.submit(phase.create)
        submitted = time.time() - t0
        while phase.outstanding() and not phase.expired():
            time.sleep(1)
            phase.poll()
    else:
        attempts = 0
        submitted = 0.0
        while not phase.expired():
            while attempts < count and len(phase.outstanding()) < args.window:
                attempts += 1
                phase.create()
            if attempts >= count:
                submitted = submitted or time.time() - t0
                if not phase.outstanding():
                    break
            time.sleep(0.5)
            phase.poll()
    observed = time.time() - t0
    cpu = meter.stop()
    sampler.stopping.set()
    sampler.join(5)
    out = phase.report(t0, cpu, "worker", list(sampler.samples.values()))
    out |= {"mode": mode, "requested": count, "submit_s": round(submitted, 2),
            "observed_all_final_s": round(observed, 1),
            "loadavg_at_start": [round(x, 2) for x in load]}
    if mode == "burst":
        out["burst_s"] = out["first_create_to_last_end_s"]
    return out


def run_config(api: Api, deployment_id: str, worker_pid: int, trees: dict[str, int],
               args: argparse.Namespace, settle_pids: list[int]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    fork = forkserver_of(worker_pid)
    if fork is not None:
        result["forkserver_before"] = memory_mb(fork)
    idle = idle_rates(worker_pid, trees, settle_pids, args.idle)
    result["idle_cpu_s_per_s"] = idle
    for mode, count in (("burst", args.runs), ("sustained", args.sustained)):
        if count <= 0:
            continue
        settle(settle_pids)
        print(f"  {mode}: {count} runs", flush=True)
        result[mode] = out = measure(api, deployment_id, worker_pid, trees, mode, count, args)
        if idle:
            # What the processes burn while idle (polling, loop services, the other
            # worker's polls), taken off: the cost a run adds.
            busy = out["observed_all_final_s"]
            per = max(out["created"], 1)
            worker_cpu = out["cpu_s"]["worker"]
            server_cpu = out["cpu_s_per_run_server"] * per
            out["cpu_s_per_run_worker_net"] = round(
                (worker_cpu - idle["worker"] * busy) / per, 3)
            out["cpu_s_per_run_server_net"] = round(
                (server_cpu - idle["server"] * busy) / per, 3)
        print(f"  {mode}: {json.dumps({k: result[mode][k] for k in SUMMARY if k in result[mode]})}",
              flush=True)
    if fork is not None:
        settle(settle_pids)
        result["forkserver_after"] = memory_mb(fork)
        result["forkserver_same_pid"] = forkserver_of(worker_pid) is fork or (
            (now := forkserver_of(worker_pid)) is not None and now.pid == fork.pid)
    return result


def idle_rates(worker_pid: int, trees: dict[str, int], settle_pids: list[int],
               seconds: float) -> dict[str, float]:
    """CPU-s per second of the worker tree and the server processes with no run at all."""
    if seconds <= 0:
        return {}
    settle(settle_pids)
    meter = CpuMeter({"worker": worker_pid, **trees})
    meter.start()
    t0 = time.monotonic()
    time.sleep(seconds)
    cpu = meter.stop()
    span = time.monotonic() - t0
    return {
        "worker": round(cpu["worker"] / span, 3),
        "server": round(sum(v for k, v in cpu.items() if k != "worker" and k not in SIDE)
                        / span, 3),
    }


SUMMARY = ("created", "failures", "burst_s", "runs_per_min", "lag_p50_s", "lag_p95_s",
           "cpu_s_per_run_worker", "cpu_s_per_run_server")


# --- (a): stock Prefect server -----------------------------------------------------------

def deploy(root: Path, env: dict[str, str], pools: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", DEPLOY.format(pools=pools, src=str(root))],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"deploy failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


@contextlib.contextmanager
def started(argv: list[str], env: dict[str, str], log: Path, cwd: Path
            ) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)


def config_a(root: Path, ports: Ports, args: argparse.Namespace) -> dict[str, Any]:
    port = ports.take()
    base = f"http://127.0.0.1:{port}"
    server_env = CLEAN_ENV | {
        "PREFECT_HOME": str(root / "home-server"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    client_env = CLEAN_ENV | {
        "PREFECT_API_URL": f"{base}/api", "PYTHONPATH": str(root),
        "PREFECT_WORKER_QUERY_SECONDS": f"{args.poll:g}",
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
    }
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(started(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], server_env, root / "server-a.log", root))
        api = Api(base)
        wait_for("the stock server's /api/health", lambda: api.get("/health") is True, 300)
        worker = stack.enter_context(started(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "bench-a",
             "--type", "process", "--name", "bench-a", "--limit", str(args.limit)],
            client_env | {"PREFECT_HOME": str(root / "home-worker-a")},
            root / "worker-a.log", root))
        wait_for("the stock worker's pool", lambda: bool(api.get("/work_pools/bench-a")), 300)
        deploy(root, client_env | {"PREFECT_HOME": str(root / "home-deploy-a")}, ["bench-a"])
        dep = api.get("/deployments/name/noop/bench-a")["id"]
        return run_config(api, dep, worker.pid, {"server": server.pid}, args, [worker.pid])


# --- (b)/(c): a prefectstack stack ---------------------------------------------------------

def write_stack(root: Path, ports: Ports, args: argparse.Namespace,
                configs: list[str]) -> dict[str, int]:
    p = {k: ports.take() for k in ("pg", "redis", "api", "https", "http", "auth")}
    workers = ""
    for config in configs:
        name, warm = STACK_WORKERS[config]
        workers += f"""\
  - name: {name}
    pool: bench-{config}
    warm: {str(warm).lower()}
    limit: {args.limit}
    poll_seconds: {args.poll:g}
    health_port: {ports.take()}
"""
    (root / "stack.yaml").write_text(f"""\
version: 1
name: benchruns
state_dir: state
postgres:
  port: {p["pg"]}
redis:
  port: {p["redis"]}
api:
  port: {p["api"]}
edge:
  https_port: {p["https"]}
  http_port: {p["http"]}
auth:
  port: {p["auth"]}
workers:
{workers}examples:
  enabled: false
""")
    return p


def prefectstack(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefectstack", *args], cwd=cwd, env=CLEAN_ENV,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def config_stack(root: Path, ports: Ports, args: argparse.Namespace,
                 configs: list[str]) -> dict[str, dict[str, Any]]:
    p = write_stack(root, ports, args, configs)
    try:
        up = prefectstack("up", "--detach", cwd=root, timeout=1200)
        if up.returncode != 0:
            raise SystemExit(f"up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
        created = prefectstack("keys", "create", "bench", "--role", "developer", cwd=root)
        if created.returncode != 0:
            raise SystemExit(f"keys create failed:\n{created.stderr[-2000:]}")
        key = created.stdout.strip().splitlines()[-1]
        base = f"https://localhost:{p['https']}"
        ca = root / "state" / "ca.crt"
        env = CLEAN_ENV | {
            "PREFECT_API_URL": f"{base}/api", "PREFECT_API_AUTH_STRING": f"bench:{key}",
            "PREFECT_API_SSL_CERT_FILE": str(ca),
            "PREFECT_HOME": str(root / "home"), "PYTHONPATH": str(root),
        }
        deploy(root, env, [f"bench-{c}" for c in configs])
        state = json.loads((root / "state" / "state.json").read_text())
        pids = {s["name"]: s["pid"] for s in state["services"]
                if s.get("pid") and s.get("kind") == "daemon"}
        worker_names = {STACK_WORKERS[c][0] for c in configs}
        server_trees = {n: pid for n, pid in pids.items() if n not in worker_names}
        api = Api(base, key, ca)
        results: dict[str, dict[str, Any]] = {}
        for config in configs:
            name = STACK_WORKERS[config][0]
            print(f"{LABELS[config]}", flush=True)
            dep = api.get(f"/deployments/name/noop/bench-{config}")["id"]
            results[config] = run_config(
                api, dep, pids[name], server_trees, args,
                [pids[STACK_WORKERS[c][0]] for c in configs])
            results[config]["server_processes"] = sorted(server_trees)
        return results
    finally:
        if not args.keep:
            down = prefectstack("down", cwd=root, timeout=300)
            if down.returncode != 0:
                print(f"warning: down failed: {down.stderr[-1000:]}", file=sys.stderr)


# --- output --------------------------------------------------------------------------------

ROWS = (
    ("burst: submit -> all final (s)", "burst", "burst_s"),
    ("burst: lag p50 (s)", "burst", "lag_p50_s"),
    ("burst: lag p95 (s)", "burst", "lag_p95_s"),
    ("burst: worker CPU-s/run", "burst", "cpu_s_per_run_worker"),
    ("burst: server CPU-s/run", "burst", "cpu_s_per_run_server"),
    ("burst: worker CPU-s/run net", "burst", "cpu_s_per_run_worker_net"),
    ("burst: server CPU-s/run net", "burst", "cpu_s_per_run_server_net"),
    ("burst: child USS median (MB)", "burst", "child_uss_mb_median"),
    ("burst: failures", "burst", "failures"),
    ("burst: creation retries", "burst", "creation_retries"),
    ("sustained: runs/min", "sustained", "runs_per_min"),
    ("sustained: lag p50 (s)", "sustained", "lag_p50_s"),
    ("sustained: lag p95 (s)", "sustained", "lag_p95_s"),
    ("sustained: worker CPU-s/run", "sustained", "cpu_s_per_run_worker"),
    ("sustained: server CPU-s/run", "sustained", "cpu_s_per_run_server"),
    ("sustained: worker CPU-s/run net", "sustained", "cpu_s_per_run_worker_net"),
    ("sustained: server CPU-s/run net", "sustained", "cpu_s_per_run_server_net"),
    ("sustained: child USS median (MB)", "sustained", "child_uss_mb_median"),
    ("sustained: failures", "sustained", "failures"),
    ("sustained: creation retries", "sustained", "creation_retries"),
)


def _ratio(top: Any, bottom: Any) -> str:
    if isinstance(top, (int, float)) and isinstance(bottom, (int, float)) and bottom:
        return f"{top / bottom:.2f}"
    return "-"


def table(results: dict[str, dict[str, Any]]) -> str:
    cols = [c for c in CONFIGS if c in results]
    header = f"{'':<34}" + "".join(f"{'(' + c + ')':>10}" for c in cols)
    ratios = [r for r in ("a", "b") if r in results and "c" in results]
    header += "".join(f"{'c/' + r:>8}" for r in ratios)
    lines = [header]
    for label, phase, key in ROWS:
        values = {c: results[c].get(phase, {}).get(key) for c in cols}
        line = f"{label:<34}" + "".join(
            f"{'-' if values[c] is None else values[c]!s:>10}" for c in cols)
        line += "".join(f"{_ratio(values['c'], values[r]):>8}" for r in ratios)
        lines.append(line)
    if "c" in results:
        before, after = results["c"].get("forkserver_before"), results["c"].get("forkserver_after")
        lines.append(f"(c) forkserver RSS/USS MB before {before}, after {after}")
    return "\n".join(lines)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="burst size")
    parser.add_argument("--sustained", type=int, default=500, help="runs of the sustained load")
    parser.add_argument("--configs", default="a,b,c",
                        help="which of a,b,c to measure, in this order (b,c share a stack)")
    parser.add_argument("--limit", type=int, default=8, help="each worker's --limit")
    parser.add_argument("--poll", type=float, default=2,
                        help="workers' poll interval (PREFECT_WORKER_QUERY_SECONDS)")
    parser.add_argument("--window", type=int, default=0,
                        help="runs kept outstanding in the sustained load (0: 2 x --limit)")
    parser.add_argument("--create-threads", type=int, default=8,
                        help="concurrent creations in the burst")
    parser.add_argument("--idle", type=float, default=20,
                        help="seconds of idle CPU measured before each configuration (0: none)")
    parser.add_argument("--timeout", type=float, default=1800, help="per phase, seconds")
    parser.add_argument("--port-range", default=None,
                        help="LO-HI: take every port from this range (default: kernel-chosen)")
    parser.add_argument("--prefix", default="bench-runs-", help="temp dir name prefix")
    parser.add_argument("--json", type=Path, default=Path("bench_runs.json"))
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or any(c not in CONFIGS for c in configs):
        parser.error("--configs: a comma-separated subset of a,b,c")
    args.window = args.window or 2 * args.limit
    signal.signal(signal.SIGTERM, _terminate)
    ports = Ports(args.port_range)
    load_before = os.getloadavg()
    started_at = time.time()
    results: dict[str, dict[str, Any]] = {}
    dirs: list[str] = []
    stacked = [c for c in configs if c in STACK_WORKERS]
    # In the order given: "a" before or after the stack's configurations.
    steps = ["a", "stack"] if configs[0] == "a" else ["stack", "a"]
    try:
        for step in steps:
            if step == "a" and "a" in configs:
                root = Path(tempfile.mkdtemp(prefix=args.prefix + "a-"))
                dirs.append(str(root))
                (root / "bench_flow.py").write_text(FLOW)
                print(LABELS["a"], flush=True)
                results["a"] = config_a(root, ports, args)
            elif step == "stack" and stacked:
                root = Path(tempfile.mkdtemp(prefix=args.prefix + "stack-"))
                dirs.append(str(root))
                root.chmod(0o755)  # run as root; the stack's services run as their accounts
                (root / "bench_flow.py").write_text(FLOW)
                results |= config_stack(root, ports, args, stacked)
    finally:
        out: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
            "options": {"runs": args.runs, "sustained": args.sustained, "limit": args.limit,
                        "poll_seconds": args.poll, "window": args.window,
                        "create_threads": args.create_threads,
                        "prefetch_seconds": "Prefect default (10)"},
            "wall_s": round(time.time() - started_at, 1),
            "dirs": dirs, "results": results,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\nload average before {out['machine']['loadavg_before']}, "
          f"after {out['machine']['loadavg_after']}; wall {out['wall_s']} s; JSON: {args.json}")


if __name__ == "__main__":
    main()
