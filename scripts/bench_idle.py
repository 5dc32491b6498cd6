#!/usr/bin/env python3
"""Benchmark: what an idle stack costs. Starts the default stack (a temp dir, free ports, one
worker, like the integration tests' `stack_yaml`), lets it settle, then measures over
--seconds the CPU of every service's process tree and of the supervisor itself (utime+stime
from /proc/<pid>/stat, as a percentage of one core) and the growth of Redis's data (its
append-only files): net, what it appended (extrapolated to one hour), its peak size and how
often Redis compacted it. Prints a table and writes JSON.

A figure from another run (e.g. measured on the commit before a change) is compared side by
side with --baseline FILE, where FILE is the JSON an earlier run wrote. Usage:

    python scripts/bench_idle.py [--settle 30] [--seconds 120] [--json idle.json]
                                 [--baseline before.json]

Everything binds to 127.0.0.1, every wait is bounded, and the stack is stopped at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
TICKS = os.sysconf("SC_CLK_TCK")
SUPERVISOR = "(supervisor)"
TOTAL = "(all)"
AOF_SAMPLE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_stack(root: Path) -> None:
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker", "https", "http", "auth")}
    (root / "stack.yaml").write_text(f"""\
version: 1
name: benchidle
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
  - name: worker-1
    pool: bench-pool
    limit: 4
    poll_seconds: 2
    health_port: {ports["worker"]}
examples:
  enabled: true
  interval_seconds: 3600
""")


def prefectstack(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefectstack", *args], cwd=cwd, env=CLEAN_ENV,
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces): field 3 onwards."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields:
                tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def tree_ticks(pid: int, tree: dict[int, list[int]], with_children: bool) -> dict[int, int]:
    """CPU ticks per process of pid's tree: utime+stime (and cutime+cstime, the reaped
    children's, when `with_children`), keyed by pid so a later sample can subtract."""
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        fields = stat_fields(current)
        if fields is None:
            continue
        # fields[11..14] are utime, stime, cutime, cstime (stat fields 14-17)
        ticks = int(fields[11]) + int(fields[12])
        if with_children:
            ticks += int(fields[13]) + int(fields[14])
            todo.extend(tree.get(current, []))
        out[current] = ticks
    return out


def sample(state: dict[str, Any]) -> dict[str, dict[int, int]]:
    tree = children_of()
    found = {SUPERVISOR: tree_ticks(state["supervisor_pid"], tree, with_children=False)}
    for svc in state["services"]:
        if svc.get("pid"):
            found[svc["name"]] = tree_ticks(svc["pid"], tree, with_children=True)
    return found


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def measure(root: Path, settle: float, seconds: float) -> dict[str, Any]:
    start = time.monotonic()
    result = prefectstack("up", "--detach", cwd=root)
    if result.returncode != 0:
        logs = "".join(
            f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            for log in sorted((root / "state" / "logs").glob("*.log"))
        )
        raise SystemExit(f"up failed:\n{result.stdout}\n{result.stderr}{logs}")
    ready_s = time.monotonic() - start
    time.sleep(settle)
    state = json.loads((root / "state" / "state.json").read_text())
    redis_dir = root / "state" / "data" / "redis"
    before, aof_before, t0 = sample(state), dir_bytes(redis_dir), time.monotonic()
    # Redis's size every few seconds: what it appended (the sum of the rises) and how large
    # its files got, since a compaction (a drop) hides the writes from a before/after delta.
    sizes = [aof_before]
    while time.monotonic() < t0 + seconds:
        time.sleep(max(0.0, min(AOF_SAMPLE_SECONDS, t0 + seconds - time.monotonic())))
        sizes.append(dir_bytes(redis_dir))
    after, aof_after, t1 = sample(state), sizes[-1], time.monotonic()
    elapsed = t1 - t0
    appended = sum(max(0, b - a) for a, b in itertools.pairwise(sizes))
    cpu: dict[str, float] = {}
    for name, ticks in after.items():
        used = sum(t - before.get(name, {}).get(pid, 0) for pid, t in ticks.items())
        cpu[name] = round(100.0 * used / TICKS / elapsed, 2)
    cpu[TOTAL] = round(sum(cpu.values()), 2)
    growth = aof_after - aof_before
    return {
        "ready_s": round(ready_s, 1),
        "settle_s": settle,
        "measured_s": round(elapsed, 1),
        "cpu_percent_of_one_core": cpu,
        "redis_dir_bytes": aof_after,
        "redis_dir_max_bytes": max(sizes),
        "redis_compactions": sum(1 for a, b in itertools.pairwise(sizes) if b < a),
        "redis_growth_bytes": growth,
        "redis_growth_mb_per_hour": round(growth / elapsed * 3600 / 2**20, 2),
        "redis_appended_mb_per_hour": round(appended / elapsed * 3600 / 2**20, 2),
    }


def table(result: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    now = result["cpu_percent_of_one_core"]
    then = (baseline or {}).get("cpu_percent_of_one_core", {})
    head = f"{'process':<16}{'CPU % (1 core)':>16}"
    if baseline:
        head += f"{'baseline':>12}"
    lines = [head]
    for name in sorted(now, key=lambda n: (n == TOTAL, n != SUPERVISOR, n)):
        row = f"{name:<16}{now[name]:>16.2f}"
        if baseline:
            row += f"{then[name]:>12.2f}" if name in then else f"{'-':>12}"
        lines.append(row)
    growth = f"redis data growth: {result['redis_growth_mb_per_hour']:.2f} MB/hour"
    if baseline and "redis_growth_mb_per_hour" in baseline:
        growth += f" (baseline {baseline['redis_growth_mb_per_hour']:.2f} MB/hour)"
    lines += ["", growth + f"; redis dir {result['redis_dir_bytes'] / 2**20:.2f} MB"]
    if "redis_dir_max_bytes" in result:
        lines.append(f"redis appended {result['redis_appended_mb_per_hour']:.2f} MB/hour; its "
                     f"files peaked at {result['redis_dir_max_bytes'] / 2**20:.2f} MB, "
                     f"compacted {result['redis_compactions']} times")
    lines.append(f"ready in {result['ready_s']}s; settled {result['settle_s']}s; "
                 f"measured {result['measured_s']}s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=30.0, help="seconds after ready")
    parser.add_argument("--seconds", type=float, default=120.0, help="seconds measured")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--baseline", type=Path, help="JSON of an earlier run to compare with")
    args = parser.parse_args()
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # as root, the unprivileged `prefectstack` account must enter it
        write_stack(root)
        try:
            result = measure(root, args.settle, args.seconds)
        finally:
            prefectstack("down", cwd=root, timeout=180)
    result["machine"] = {
        "platform": platform.platform(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "loadavg_at_end": os.getloadavg(),
    }
    result["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    print(table(result, baseline))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
