#!/usr/bin/env python3
"""Benchmark: wall time of `prefectstack --help` and `prefectstack status`, each run as a
fresh subprocess (what a person at a shell waits for), median of --runs.

`status` reads a throwaway stack file whose state dir is empty (a stack that is not running),
unless --file names a real one. Usage:

    python scripts/bench_cli.py [--runs 5] [--file stack.yaml] [--baseline REF] [--json]

`--baseline REF` (a git ref, e.g. a commit before a change) also times that version of the
package, extracted with `git archive` and run with PYTHONPATH, in the same run and
interleaved with the current one, and prints the ratio.
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


def wall_time(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False, timeout=120)
    return time.perf_counter() - start


def extract(ref: str, into: Path) -> Path:
    """The package's source at a git ref, for PYTHONPATH."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--file", type=Path, default=None, help="stack file for `status`")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--baseline", default=None, metavar="REF",
                        help="also time the package at this git ref")
    args = parser.parse_args()
    base = [sys.executable, "-m", "prefectstack"]
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        stack = args.file.resolve() if args.file else Path(tmp) / "stack.yaml"
        if args.file is None:
            stack.write_text("version: 1\nname: bench\nstate_dir: state\n")
        cases = {"--help": [*base, "--help"], "status": [*base, "status", "-f", str(stack)]}
        versions = {"current": CLEAN_ENV}
        if args.baseline:
            src = extract(args.baseline, Path(tmp))
            versions["baseline"] = CLEAN_ENV | {"PYTHONPATH": str(src)}
        times: dict[str, dict[str, list[float]]] = {v: {c: [] for c in cases} for v in versions}
        for env in versions.values():  # warm the page cache and .pyc files
            wall_time(cases["--help"], Path(tmp), env)
        for _ in range(args.runs):  # interleaved, so a load change hits both alike
            for version, env in versions.items():
                for name, argv in cases.items():
                    times[version][name].append(wall_time(argv, Path(tmp), env))
    results = times["current"]
    medians = {name: round(statistics.median(t), 3) for name, t in results.items()}
    baseline = ({name: round(statistics.median(t), 3) for name, t in times["baseline"].items()}
                if "baseline" in times else None)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "platform": platform.platform()}
    if args.json:
        print(json.dumps({"runs": args.runs, "median_seconds": medians,
                          "baseline": args.baseline, "baseline_median_seconds": baseline,
                          "machine": machine}))
        return
    print(f"{machine['cpus']} CPUs, Python {machine['python']}, {machine['platform']}")
    for name, value in medians.items():
        spread = ", ".join(f"{t:.3f}" for t in results[name])
        print(f"prefectstack {name:<7} median {value:.3f}s over {args.runs} runs ({spread})")
        if baseline:
            print(f"  baseline {args.baseline}: {baseline[name]:.3f}s "
                  f"({value / baseline[name]:.2f}x of it)")


if __name__ == "__main__":
    main()
