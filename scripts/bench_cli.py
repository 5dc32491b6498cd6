#!/usr/bin/env python3
"""Benchmark: wall time of `prefectstack --help` and `prefectstack status`, each run as a
fresh subprocess (what a person at a shell waits for), median of --runs.

`status` reads a throwaway stack file whose state dir is empty (a stack that is not running),
unless --file names a real one. Usage:

    python scripts/bench_cli.py [--runs 5] [--file stack.yaml] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def wall_times(argv: list[str], runs: int, cwd: Path) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=CLEAN_ENV, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True, timeout=120)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--file", type=Path, default=None, help="stack file for `status`")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    base = [sys.executable, "-m", "prefectstack"]
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        stack = args.file.resolve() if args.file else Path(tmp) / "stack.yaml"
        if args.file is None:
            stack.write_text("version: 1\nname: bench\nstate_dir: state\n")
        cases = {"--help": [*base, "--help"], "status": [*base, "status", "-f", str(stack)]}
        wall_times(cases["--help"], 1, Path(tmp))  # warm the page cache and .pyc files
        results = {name: wall_times(argv, args.runs, Path(tmp)) for name, argv in cases.items()}
    medians = {name: round(statistics.median(t), 3) for name, t in results.items()}
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "platform": platform.platform()}
    if args.json:
        print(json.dumps({"runs": args.runs, "median_seconds": medians, "machine": machine}))
        return
    print(f"{machine['cpus']} CPUs, Python {machine['python']}, {machine['platform']}")
    for name, value in medians.items():
        spread = ", ".join(f"{t:.3f}" for t in results[name])
        print(f"prefectstack {name:<7} median {value:.3f}s over {args.runs} runs ({spread})")


if __name__ == "__main__":
    main()
