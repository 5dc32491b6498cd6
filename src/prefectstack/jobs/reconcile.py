"""Daemon: flow runs whose process is gone from this host end Crashed, never stuck.

`python -m prefectstack.jobs.reconcile`, with the stack's worker key (PREFECT_API_URL, ...).
A worker killed with -9, or a stack stopped or killed mid-burst, leaves runs PENDING
("Submitting") or RUNNING that nothing else will ever finish: the worker that would report
their exit is gone, and Prefect's flow-run heartbeats cover neither a run whose process never
started nor a process killed before its first heartbeat. Every `PREFECTSTACK_RECONCILE_INTERVAL`
seconds (and at start) this job:

1. reads the runs that are PENDING, RUNNING or CANCELLING;
2. looks at this host's processes: the `prefect worker start --name W` processes (the local
   workers) and the flow-run processes (Prefect starts each with `PREFECT__FLOW_RUN_ID` in its
   environment, which identifies the run exactly, with no pid-reuse ambiguity);
3. suspects a run only when its infrastructure is provably local and gone: it carries the
   `prefect.worker.name` label of a worker running on this host (or, still PENDING and not
   yet labelled, its pool is served here), no process here has its id, and, for a PENDING run,
   it has been PENDING for `PREFECTSTACK_RECONCILE_PENDING_GRACE` seconds;
4. acts on a run only when it was suspect on two passes in a row, so a live worker reports
   its run's exit itself first, and proposes (never forces) `Crashed` (a CANCELLING run:
   `Cancelled`) with a message that says why. A run that finished meanwhile stays finished.

Runs of workers on other hosts are never touched (their processes are not visible here), and
when a possible flow-run process's environment cannot be read, the pass does nothing.

Crashed, not re-queued: a PENDING run without a recorded pid may still have had its process
started (the worker records the pid after the start), so putting it back to SCHEDULED could
run the flow twice. Crashed is Prefect's own state for "the infrastructure died"; a deployment
with retries or an automation can rerun it deliberately.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil

from prefectstack import prefect_api
from prefectstack.errors import StackError
from prefectstack.jobs import run
from prefectstack.prefect_api import PrefectApi

ACTIVE = ["PENDING", "RUNNING", "CANCELLING"]
WORKER_LABEL = "prefect.worker.name"
RUN_ENV = "PREFECT__FLOW_RUN_ID"
INTERVAL = 15.0
PENDING_GRACE = 60.0


@dataclass(frozen=True)
class Host:
    """What this host shows of Prefect's workers and flow runs."""

    workers: frozenset[str]
    pools: frozenset[str]
    runs: frozenset[str]
    """ids of the flow runs that have a live process here"""
    uncertain: bool = False
    """a process that may run a flow could not be read: suspect nothing"""


@dataclass(frozen=True)
class Verdict:
    run_id: str
    name: str
    state: dict[str, str]
    """the state to propose"""


# -- pure ------------------------------------------------------------------------------------


def worker_of(cmdline: Sequence[str]) -> tuple[str, str] | None:
    """(name, pool) of a `prefect worker start --name N --pool P` command line, or of the
    warm worker's `python -m prefectstack.warm.worker --name N --pool P` (same options)."""
    args = list(cmdline)
    for i in range(len(args) - 1):
        stock = args[i] == "worker" and args[i + 1] == "start"
        warm = args[i] == "-m" and args[i + 1] == "prefectstack.warm.worker"
        if stock or warm:
            opts = _options(args[i + 2:])
            name = opts.get("--name") or opts.get("-n")
            pool = opts.get("--pool") or opts.get("-p") or ""
            return (name, pool) if name else None
    return None


def _options(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, arg in enumerate(args):
        if "=" in arg and arg.startswith("--"):
            key, value = arg.split("=", 1)
            out[key] = value
        elif arg.startswith("-") and i + 1 < len(args):
            out[arg] = args[i + 1]
    return out


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def is_suspect(flow_run: dict[str, object], host: Host, now: datetime,
               pending_grace: float = PENDING_GRACE) -> bool:
    """Whether this run's infrastructure is provably local and gone (see the module doc)."""
    state = flow_run.get("state") or {}
    assert isinstance(state, dict)
    kind = state.get("type")
    if host.uncertain or kind not in ACTIVE or str(flow_run.get("id")) in host.runs:
        return False
    labels = flow_run.get("labels") or {}
    owner = labels.get(WORKER_LABEL) if isinstance(labels, dict) else None
    if owner:
        local = owner in host.workers
    else:
        # Not labelled yet: the worker died between taking the run and starting it.
        local = kind == "PENDING" and flow_run.get("work_pool_name") in host.pools
    if not local:
        return False
    if kind == "PENDING" and not flow_run.get("infrastructure_pid"):
        since = parse_time(str(state.get("timestamp") or "")) or now
        return (now - since).total_seconds() >= pending_grace
    return True


def verdict(flow_run: dict[str, object], hostname: str) -> Verdict:
    state = flow_run.get("state") or {}
    assert isinstance(state, dict)
    labels = flow_run.get("labels") or {}
    owner = labels.get(WORKER_LABEL) if isinstance(labels, dict) else None
    who = f"worker {owner}" if owner else f"pool {flow_run.get('work_pool_name')}"
    was = f"{state.get('type')} ({state.get('name')})"
    if state.get("type") == "CANCELLING":
        new = {"type": "CANCELLED", "name": "Cancelled",
               "message": f"Cancelled by prefectstack reconcile: the run was {was} but no "
                          f"process of it is left on {hostname} ({who})."}
    else:
        new = {"type": "CRASHED", "name": "Crashed",
               "message": f"Crashed: the run was {was} but its infrastructure is gone: no "
                          f"process of it is left on {hostname} ({who}); marked by "
                          "prefectstack reconcile."}
    return Verdict(str(flow_run.get("id")), str(flow_run.get("name")), new)


def decide(flow_runs: Iterable[dict[str, object]], host: Host, now: datetime,
           previous: set[str], hostname: str,
           pending_grace: float = PENDING_GRACE) -> tuple[list[Verdict], set[str]]:
    """The runs to act on (suspect on this pass and the previous one), and this pass's
    suspects (the next pass's `previous`)."""
    suspects = {str(r.get("id")): r for r in flow_runs if is_suspect(r, host, now, pending_grace)}
    act = [verdict(r, hostname) for rid, r in suspects.items() if rid in previous]
    return act, set(suspects)


# -- this host -------------------------------------------------------------------------------


def scan() -> Host:
    """This host's workers and flow-run processes."""
    workers: set[str] = set()
    pools: set[str] = set()
    runs: set[str] = set()
    uncertain = False
    for proc in psutil.process_iter():
        try:
            cmdline = proc.cmdline()
        except psutil.AccessDenied:
            cmdline = None
        except psutil.Error:
            continue  # gone meanwhile
        found = worker_of(cmdline or [])
        if found:
            workers.add(found[0])
            pools.add(found[1])
            continue
        try:
            run_id = proc.environ().get(RUN_ENV)
        except psutil.AccessDenied:
            if cmdline is None or any("prefect" in part for part in cmdline):
                uncertain = True
            continue
        except psutil.Error:
            continue
        if run_id:
            runs.add(run_id)
    return Host(frozenset(workers), frozenset(pools - {""}), frozenset(runs), uncertain)


# -- the loop --------------------------------------------------------------------------------


async def reconcile_once(api: PrefectApi, previous: set[str], pending_grace: float) -> set[str]:
    flow_runs = await api.read_flow_runs_in(ACTIVE)
    if not flow_runs:
        return set()
    hostname = socket.gethostname()
    act, suspects = decide(flow_runs, scan(), datetime.now(UTC), previous, hostname,
                           pending_grace)
    for v in act:
        status = await api.propose_flow_run_state(v.run_id, v.state)
        print(f"flow run {v.name} ({v.run_id}): {v.state['name']} ({status}): "
              f"{v.state['message']}", flush=True)
    return suspects


async def main() -> None:
    interval = _seconds("PREFECTSTACK_RECONCILE_INTERVAL", INTERVAL)
    pending_grace = _seconds("PREFECTSTACK_RECONCILE_PENDING_GRACE", PENDING_GRACE)
    previous: set[str] = set()
    target = prefect_api.target_from_env()
    print(f"reconciling flow runs every {interval:g} s", flush=True)
    while True:
        try:
            async with prefect_api.connect(target) as api:
                while True:
                    previous = await reconcile_once(api, previous, pending_grace)
                    await asyncio.sleep(interval)
        except StackError as exc:
            # The API restarting is no reason to stop: try again on the next pass.
            print(f"warning: {exc}", file=sys.stderr, flush=True)
            previous = set()
        await asyncio.sleep(interval)


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        raise StackError(f"{name} must be a number of seconds", exit_code=2) from None


if __name__ == "__main__":
    sys.exit(run(main()))
