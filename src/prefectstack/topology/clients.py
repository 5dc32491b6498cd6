"""The stack's own Prefect clients: the one-shot that creates work pools, the workers, and
the one-shot that registers the example deployments."""

from __future__ import annotations

from prefectstack.accounts import flows_account
from prefectstack.errors import StackError
from prefectstack.stack.model import Stack
from prefectstack.topology import stack_secrets
from prefectstack.topology.placeholders import BIND_HOST, port
from prefectstack.topology.service import Probe, Service
from prefectstack.topology.settings import (
    client_deps,
    client_env,
    public_edge_env,
    worker_health_port,
)


def cluster_workers(stack: Stack) -> set[str]:
    """The workers that need a Kubernetes cluster: the ones of `kubernetes` pools."""
    return {w.name for w in stack.workers if w.type == "kubernetes"}


def check_target(stack: Stack, target: str) -> None:
    """Refuse a stack the target cannot run: `kubernetes` pools need a cluster."""
    if target != "kubernetes" and cluster_workers(stack):
        names = ", ".join(sorted(cluster_workers(stack)))
        raise StackError(
            f"workers {names}: a `kubernetes` pool's runs are Kubernetes Jobs, which {target} "
            "cannot run",
            hint="`prefectstack render kubernetes` renders them; for this target use "
                 "`type: process` or leave those workers out")


def workers(stack: Stack) -> list[Service]:
    out = []
    for i, worker in enumerate(stack.workers):
        listen = worker_health_port(stack, i)
        home = f"home-{worker.name}"
        # The warm worker takes `prefect worker start`'s arguments (it runs that command
        # with its own worker class for `process` pools). A `kubernetes` pool's worker is
        # Prefect's own (prefect-kubernetes): it starts Jobs, not processes.
        launcher = (
            ("python", "-m", "prefectstack.warm.worker")
            if worker.warm and worker.type == "process"
            else ("prefect", "worker", "start")
        )
        argv: tuple[str, ...] = (
            *launcher, "--pool", worker.pool, "--type", worker.type,
            "--name", worker.name, "--with-healthcheck",
        )
        if worker.limit:
            argv += ("--limit", str(worker.limit))
        env = client_env(stack, home, stack_secrets.WORKER_API_KEY) | {
            "PREFECT_WORKER_WEBSERVER_HOST": BIND_HOST,
            "PREFECT_WORKER_WEBSERVER_PORT": port(worker.name),
            "PREFECT_WORKER_QUERY_SECONDS": f"{worker.poll_seconds:g}",
        }
        if worker.preload and worker.type == "process":
            env["PREFECTSTACK_WARM_PRELOAD"] = ",".join(worker.preload)
        out.append(
            Service(
                name=worker.name,
                role="worker",
                kind="daemon",
                argv=argv,
                env=env,
                public_edge_env=public_edge_env(stack),
                ports=(listen,),
                volumes=(home,),
                # `pools` creates the work pool first: a worker key may not create one.
                depends_on=(*client_deps(stack), "pools"),
                probe=Probe("http", port=listen, path="/health"),
                # Flow code runs in the worker's children: never as the account that owns
                # the stack's secrets, the auth store or PostgreSQL's data.
                run_as=flows_account(stack.postgres.os_user),
            )
        )
    return out


def pools(stack: Stack) -> list[Service]:
    """Create the work pools of the stack's workers before the workers start."""
    if not stack.workers:
        return []
    # `NAME` (a process pool) or `NAME:kubernetes:NAMESPACE` (jobs/pools.py)
    kinds = {w.pool: w.type for w in stack.workers}
    names = [name if kind == "process" else f"{name}:{kind}:{stack.name}"
             for name, kind in sorted(kinds.items())]
    return [
        Service(
            name="pools",
            role="pools",
            kind="oneshot",
            argv=("python", "-m", "prefectstack.jobs.pools", *names),
            env=client_env(stack, "home-pools", stack_secrets.DEPLOYER_API_KEY),
            public_edge_env=public_edge_env(stack),
            volumes=("home-pools",),
            depends_on=client_deps(stack),
            probe=Probe("exit"),
        )
    ]


def examples(stack: Stack) -> list[Service]:
    if not stack.examples.enabled or not stack.workers:
        return []
    process = [w for w in stack.workers if w.type == "process"]
    if not process:
        return []
    pool = stack.examples.pool or process[0].pool
    env = client_env(stack, "home-examples", stack_secrets.DEPLOYER_API_KEY) | {
        "PREFECTSTACK_EXAMPLES_POOL": pool,
        "PREFECTSTACK_EXAMPLES_INTERVAL": str(stack.examples.interval_seconds),
    }
    return [
        Service(
            name="examples",
            role="examples",
            kind="oneshot",
            argv=("python", "-m", "prefectstack.jobs.examples"),
            env=env,
            public_edge_env=public_edge_env(stack),
            volumes=("home-examples",),
            depends_on=(*client_deps(stack), "pools"),
            probe=Probe("exit"),
        )
    ]


def reconciler(stack: Stack) -> list[Service]:
    """The daemon that marks Crashed the flow runs whose worker or process died on this host
    (`prefectstack.jobs.reconcile`). It judges by this host's processes, so it runs beside
    the local backend only: in containers, each worker's restart is a fresh container."""
    if not stack.workers or not stack.reconcile.enabled:
        return []
    env = client_env(stack, "home-reconcile", stack_secrets.WORKER_API_KEY) | {
        "PREFECTSTACK_RECONCILE_INTERVAL": f"{stack.reconcile.interval_seconds:g}",
        "PREFECTSTACK_RECONCILE_PENDING_GRACE": f"{stack.reconcile.pending_grace_seconds:g}",
    }
    return [
        Service(
            name="reconcile",
            role="reconcile",
            kind="daemon",
            argv=("python", "-m", "prefectstack.jobs.reconcile"),
            env=env,
            public_edge_env=public_edge_env(stack),
            volumes=("home-reconcile",),
            depends_on=client_deps(stack),
            probe=Probe("alive"),
            local_only=True,
        )
    ]
