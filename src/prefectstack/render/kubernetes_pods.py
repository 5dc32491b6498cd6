"""Pods, workloads and Services for the Kubernetes manifests of a stack.

`depends_on` has no Kubernetes equivalent, so each dependency becomes an init container
that waits: for a TCP port (postgres, redis), an HTTP readiness endpoint (the API) or a
completed Job (the migration). One-shots that only prepare another one-shot (db-init)
run as init containers of that Job.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefectstack import topology
from prefectstack.render import containers, kubernetes_workers
from prefectstack.render.common import (
    APP_DIR,
    APP_UID,
    CADDY_IMAGE,
    HOME_DIR,
    IMAGE_PINS,
    PG_MAJOR,
    POSTGRES_IMAGE,
    REDIS_IMAGE,
    env_name,
)
from prefectstack.render.containers import Container, Plan
from prefectstack.topology.placeholders import replace_secrets, secret_refs

PART_OF = "prefectstack"
SCRIPTS_DIR = f"{APP_DIR}/scripts"
# With the published Prefect image: the pins pip installs at start (user site on an emptyDir)
# and prefectstack's own modules and flows, mounted from a ConfigMap.
SITE_DIR = f"{APP_DIR}/site"
APP_CODE_DIR = f"{APP_DIR}/app"
FLOWS_DIR = f"{APP_DIR}/flows"
ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Writable directories under a read-only root filesystem, per image.
SCRATCH_DIRS = {"prefect": ("/tmp",), "postgres": ("/tmp", "/var/run/postgresql"),
                "redis": ("/tmp",), "caddy": ("/tmp", "/config")}
# The images' own users; Caddy's image runs as root, so its pods get an unprivileged one.
IMAGE_UIDS = {"prefect": APP_UID, "postgres": 70, "redis": 999, "caddy": APP_UID + 1}
STORAGE = {"pgdata": "10Gi", "redis": "1Gi"}
# requests cpu, memory; limits cpu, memory
RESOURCES = {
    "postgres": ("250m", "512Mi", "2", "2Gi"),
    "redis": ("50m", "128Mi", "500m", "512Mi"),
    "api": ("250m", "512Mi", "2", "2Gi"),
    "worker": ("250m", "512Mi", "2", "2Gi"),
    "edge": ("100m", "128Mi", "1", "512Mi"),
    "auth": ("100m", "128Mi", "1", "512Mi"),
    "other": ("100m", "256Mi", "1", "1Gi"),
    "wait": ("10m", "32Mi", "100m", "64Mi"),
    "install": ("100m", "128Mi", "1", "512Mi"),
    "wait-db": ("10m", "128Mi", "500m", "256Mi"),  # imports alembic and Prefect's migrations
}


class Context:
    """What every object of one stack shares: names, labels, images, the plan."""

    def __init__(self, namespace: str, app_image: str, the_plan: Plan, secret: str,
                 app_files: dict[str, str] | None = None,
                 cluster_workers: frozenset[str] = frozenset()) -> None:
        """`app_files`: ConfigMap key -> path under APP_DIR of prefectstack's modules and
        flows, when `app_image` is the published Prefect image (installed at start); None
        when it is an image built from our Dockerfile."""
        self.namespace = namespace
        self.app_image = app_image
        self.plan = the_plan
        self.secret = secret
        self.app_files = app_files
        self.cluster_workers = cluster_workers  # workers of `kubernetes` pools
        self.by_name = {c.name: c for c in the_plan.containers}
        self.jobs: dict[str, str] = {}  # one-shot container -> its Job's name

    @property
    def app_config_map(self) -> str:
        return f"{self.namespace}-app"

    def image(self, c: Container) -> str:
        if c.name in self.cluster_workers:
            return kubernetes_workers.IMAGE
        images = {"postgres": POSTGRES_IMAGE, "redis": REDIS_IMAGE, "caddy": CADDY_IMAGE}
        return images.get(c.image, self.app_image)

    def labels(self, c: Container) -> dict[str, str]:
        component = c.role
        return {"app.kubernetes.io/name": c.name, "app.kubernetes.io/component": component,
                "app.kubernetes.io/instance": self.namespace, "app.kubernetes.io/part-of": PART_OF}

    def selector(self, c: Container) -> dict[str, str]:
        return {"app.kubernetes.io/name": c.name, "app.kubernetes.io/instance": self.namespace}

    def meta(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        base = {"app.kubernetes.io/instance": self.namespace, "app.kubernetes.io/part-of": PART_OF}
        return {"name": name, "namespace": self.namespace, "labels": labels or base}


def _k8s_text(text: str) -> str:
    """Secret placeholders become `$(SECRET_X)` env references; a literal `$(` is escaped."""
    return replace_secrets(text, lambda n: f"$(SECRET_{env_name(n)})",
                           lambda piece: piece.replace("$(", "$$("))


def env_list(ctx: Context, c: Container, env: dict[str, str]) -> list[dict[str, Any]]:
    """The secret-bearing part of the environment. A value that is just a secret reads it
    from the Secret; a value that embeds one (a URL with a password) refers to a
    `SECRET_<NAME>` variable defined first, which Kubernetes expands."""
    embedded = [v for v in env.values() if secret_refs(v) and v != topology.secret(
        secret_refs(v)[0])]
    indirect = dict.fromkeys(n for text in [*embedded, *c.command] for n in secret_refs(text))
    out = [_secret_ref(ctx, f"SECRET_{env_name(n)}", n) for n in indirect]
    for key, value in env.items():
        names = secret_refs(value)
        if names and value == topology.secret(names[0]):
            out.append(_secret_ref(ctx, key, names[0]))
    out += [{"name": k, "value": _k8s_text(v)} for k, v in env.items() if v in embedded]
    return out


def _secret_ref(ctx: Context, var: str, key: str) -> dict[str, Any]:
    return {"name": var, "valueFrom": {"secretKeyRef": {"name": ctx.secret, "key": key}}}


def plain_env(c: Container) -> dict[str, str]:
    """The ConfigMap part of a container's environment."""
    return {k: v for k, v in _env(c).items() if not secret_refs(v)}


def _env(c: Container) -> dict[str, str]:
    env = containers.image_env(c) | c.env
    if c.image == "postgres":
        # A volume's root has lost+found: the data dir is below it (the image's own default).
        env["PGDATA"] = f"{containers.VOLUME_PATHS['pgdata']}/{PG_MAJOR}/docker"
    return env


def container_spec(ctx: Context, c: Container) -> dict[str, Any]:
    env = _env(c)
    spec: dict[str, Any] = {"name": c.name, "image": ctx.image(c),
                            "args": [_k8s_text(a) for a in c.command]}
    if plain_env(c):
        spec["envFrom"] = [{"configMapRef": {"name": f"{c.name}-env"}}]
    secret_env = env_list(ctx, c, env)
    if c.image == "prefect" and ctx.app_files is not None:
        secret_env = [*_installed_env(), *secret_env]
        spec["workingDir"] = FLOWS_DIR
    if secret_env:
        spec["env"] = secret_env
    if c.port:
        spec["ports"] = [{"name": "main", "containerPort": c.port}]
    spec.update(_probes(c))
    spec["resources"] = resources(c.role)
    spec["securityContext"] = container_security()
    mounts = [{"name": v, "mountPath": p} for v, p in c.volumes.items()]
    if c.image == "prefect":
        mounts.append({"name": "home", "mountPath": HOME_DIR})
        if ctx.app_files is not None:
            mounts += app_mounts()
    mounts += scratch_mounts(c.image)
    spec["volumeMounts"] = mounts
    return spec


def _installed_env() -> list[dict[str, Any]]:
    return [{"name": "PYTHONUSERBASE", "value": SITE_DIR},
            {"name": "PYTHONPATH", "value": APP_CODE_DIR}]


def app_mounts() -> list[dict[str, Any]]:
    return [{"name": "site", "mountPath": SITE_DIR, "readOnly": True},
            {"name": "app", "mountPath": APP_CODE_DIR, "readOnly": True},
            {"name": "app-flows", "mountPath": FLOWS_DIR, "readOnly": True}]


def _scratch_name(path: str) -> str:
    return "scratch" + path.replace("/", "-")


def scratch_mounts(image: str) -> list[dict[str, Any]]:
    """The writable directories of a container whose root filesystem is read-only."""
    mounts = [{"name": _scratch_name(d), "mountPath": d} for d in SCRATCH_DIRS[image]]
    if image == "postgres":
        # Parallel queries and sorts use shared memory; a container's /dev/shm is 64 MB.
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts


def scratch_volumes(images: set[str]) -> list[dict[str, Any]]:
    names = dict.fromkeys(_scratch_name(d) for i in sorted(images) for d in SCRATCH_DIRS[i])
    volumes: list[dict[str, Any]] = [{"name": n, "emptyDir": {}} for n in names]
    if "postgres" in images:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
    return volumes


def install_container(ctx: Context) -> dict[str, Any]:
    """The pins prefectstack is tested with (pip skips what the image already has) into
    the pod's user site: the published Prefect image runs as is, nothing to build."""
    return {
        "name": "install",
        "image": ctx.app_image,
        "command": ["python", "-m", "pip", "install", "--user", "--no-cache-dir",
                    "--disable-pip-version-check", "--no-warn-script-location", *IMAGE_PINS],
        "env": [{"name": "PYTHONUSERBASE", "value": SITE_DIR}, {"name": "HOME", "value": "/tmp"}],
        "resources": resources("install"),
        "securityContext": container_security(),
        "volumeMounts": [{"name": "site", "mountPath": SITE_DIR},
                         *scratch_mounts("prefect")],
    }


def app_volumes(ctx: Context) -> list[dict[str, Any]]:
    assert ctx.app_files is not None
    code = [{"key": k, "path": p.removeprefix("app/")} for k, p in ctx.app_files.items()
            if p.startswith("app/")]
    flows = [{"key": k, "path": p.removeprefix("flows/")} for k, p in ctx.app_files.items()
             if p.startswith("flows/")]
    return [{"name": "site", "emptyDir": {}},
            {"name": "app", "configMap": {"name": ctx.app_config_map, "items": code}},
            {"name": "app-flows", "configMap": {"name": ctx.app_config_map, "items": flows}}]


def _probes(c: Container) -> dict[str, Any]:
    if c.kind != "daemon":
        return {}
    timing = {"periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6}
    if c.probe.kind == "http":
        ready = {"httpGet": {"path": c.probe.path, "port": c.probe.port}, **timing}
        alive_path = "/api/health" if c.scalable else c.probe.path
        alive = {"httpGet": {"path": alive_path, "port": c.probe.port}, **timing}
        start = {"httpGet": {"path": alive_path, "port": c.probe.port}, "periodSeconds": 5,
                 "failureThreshold": 60}
        return {"startupProbe": start, "readinessProbe": ready, "livenessProbe": alive}
    command = containers.health_command(c)
    if command is None:
        return {}  # no endpoint: Kubernetes restarts the container when its process exits
    check = {"exec": {"command": command}, **timing}
    if c.probe.kind == "alive" and c.role != "services":
        return {"livenessProbe": check}
    probes = {"readinessProbe": check, "livenessProbe": check}
    if c.image == "postgres":
        # Crash recovery of a big database takes minutes: liveness waits for the first start.
        probes = {"startupProbe": {**check, "periodSeconds": 5, "failureThreshold": 120},
                  **probes}
    return probes


def resources(role: str) -> dict[str, Any]:
    cpu, memory, cpu_max, memory_max = RESOURCES.get(role, RESOURCES["other"])
    return {"requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu_max, "memory": memory_max}}


def container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True, "readOnlyRootFilesystem": True}


def migrated_wait(ctx: Context, waiter: Container) -> dict[str, Any]:
    """Wait for the database's schema to reach Prefect's migration head (not for a Job by
    name: a deleted Job would leave restarted pods waiting forever)."""
    url = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
    value = _database_url(waiter)
    assert value is not None
    env = env_list(ctx, waiter, {url: value}) if secret_refs(value) else [
        {"name": url, "value": value}]
    mounts: list[dict[str, Any]] = []
    if ctx.app_files is not None:
        env = [*_installed_env(), *env]
        mounts = app_mounts()[:2]
    return {
        "name": "wait-for-migrate",
        "image": ctx.app_image,
        "command": ["python", "-m", "prefectstack.jobs.migrated"],
        "env": env,
        "resources": resources("wait-db"),
        "securityContext": container_security(),
        "volumeMounts": [*mounts, *scratch_mounts("prefect")],
    }


# The replicated auth service's database (auth/database.py's URL_ENV; a test keeps them equal).
AUTH_DATABASE_URL = "PREFECTSTACK_AUTH_DATABASE_URL"


def _database_url(c: Container) -> str | None:
    """The database URL a container uses: Prefect's, or the replicated auth service's."""
    for name in ("PREFECT_SERVER_DATABASE_CONNECTION_URL", AUTH_DATABASE_URL):
        if name in c.env:
            return c.env[name]
    return None


def wait_container(ctx: Context, dep: Container) -> dict[str, Any]:
    mounts = [{"name": "scripts", "mountPath": SCRIPTS_DIR, "readOnly": True}]
    if dep.kind == "oneshot":
        args = ["job", ctx.jobs[dep.name]]
        # Only this container reads the Kubernetes API: the token is mounted here alone.
        mounts.append({"name": "api-token", "mountPath": ACCOUNT_DIR, "readOnly": True})
    elif dep.probe.kind == "http":
        host = "api" if dep.scalable else dep.name  # the Service in front of every API pod
        args = ["http", f"http://{host}:{dep.port}{dep.probe.path}"]
    else:
        args = ["tcp", dep.name, str(dep.port)]
    return {
        "name": f"wait-for-{dep.name}",
        "image": ctx.app_image,
        "command": ["python", f"{SCRIPTS_DIR}/wait.py", *args],
        "resources": resources("wait"),
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }


def token_volume() -> dict[str, Any]:
    """What automountServiceAccountToken would mount in every container, for one."""
    return {"name": "api-token", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt",
                                                             "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
            "fieldPath": "metadata.namespace"}}]}},
    ]}}


def pod_spec(ctx: Context, c: Container, init: list[Container]) -> dict[str, Any]:
    """`init`: one-shots folded into this pod as init containers (after their own waits)."""
    folded = {i.name for i in init}
    inits: list[dict[str, Any]] = []
    waits_for_job = False
    for step in [*init, c]:
        for name in step.depends_on:
            dep = ctx.by_name.get(name)
            if dep is None or name in folded:
                continue
            if dep.role == "migrate" and _database_url(step) is not None:
                inits.append(migrated_wait(ctx, step))
            else:
                inits.append(wait_container(ctx, dep))
                waits_for_job = waits_for_job or dep.kind == "oneshot"
        if step is not c:
            inits.append(container_spec(ctx, step))
    uid = IMAGE_UIDS[c.image]
    prefect = any(x.image == "prefect" for x in [*init, c])
    if prefect and ctx.app_files is not None:
        inits.insert(0, install_container(ctx))
    spec: dict[str, Any] = {
        # No container gets a token by default; a wait for a Job mounts one (token_volume).
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid,
                            "fsGroup": uid, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if waits_for_job:
        spec["serviceAccountName"] = f"{ctx.namespace}-waiter"
    if c.name in ctx.cluster_workers:  # its Role also lets its readiness wait read Jobs
        spec.update(kubernetes_workers.pod_settings(ctx.namespace))
    if inits:
        spec["initContainers"] = inits
    spec["containers"] = [container_spec(ctx, c)]
    volumes: list[dict[str, Any]] = []
    if any(x.image == "prefect" for x in [*init, c]):
        volumes.append({"name": "home", "emptyDir": {}})
    if prefect and ctx.app_files is not None:
        volumes += app_volumes(ctx)
    if any(w["name"].startswith("wait-for-") for w in inits):
        volumes.append({"name": "scripts",
                        "configMap": {"name": f"{ctx.namespace}-scripts", "defaultMode": 0o555}})
    if waits_for_job:
        volumes.append(token_volume())
    volumes += scratch_volumes({x.image for x in [*init, c]})
    spec["volumes"] = volumes
    if c.kind == "oneshot":
        spec["restartPolicy"] = "OnFailure"
    return spec


def workload(ctx: Context, c: Container) -> dict[str, Any]:
    template = {"metadata": {"labels": ctx.labels(c)}, "spec": pod_spec(ctx, c, [])}
    interchangeable = c.scalable or c.replicas > 1  # API pods, replicated auth pods
    if interchangeable:
        template["spec"]["affinity"] = spread(ctx, c.role)
    if c.volumes:  # stateful: one pod, a claim per volume
        return {
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": ctx.meta(c.name, ctx.labels(c)),
            "spec": {
                "serviceName": c.name, "replicas": 1,
                "selector": {"matchLabels": ctx.selector(c)}, "template": template,
                "volumeClaimTemplates": [
                    {"metadata": {"name": v},
                     "spec": {"accessModes": ["ReadWriteOnce"],
                              "resources": {"requests": {"storage": STORAGE.get(v, "1Gi")}}}}
                    for v in c.volumes
                ],
            },
        }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": ctx.meta(c.name, ctx.labels(c)),
        "spec": {
            "replicas": c.replicas, "selector": {"matchLabels": ctx.selector(c)},
            # API pods are interchangeable; a second copy of anything else (the scheduler, a
            # worker of the same name) must not overlap with the first.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
            if interchangeable else {"type": "Recreate"},
            "template": template,
        },
    }


def spread(ctx: Context, component: str) -> dict[str, Any]:
    """Replicas of a component on different nodes where the cluster has them."""
    return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": component,
                                              "app.kubernetes.io/instance": ctx.namespace}},
        },
    }]}}


def job(ctx: Context, c: Container, init: list[Container]) -> dict[str, Any]:
    """A one-shot; its name carries a hash of its spec because a Job's template is
    immutable: a changed stack applies as a new Job instead of failing."""
    template = {"metadata": {"labels": ctx.labels(c)}, "spec": pod_spec(ctx, c, init)}
    spec = {"backoffLimit": 6, "template": template}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{c.name}-{digest}"
    ctx.jobs[c.name] = name
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": ctx.meta(name, ctx.labels(c)),
            "spec": spec}


def service(ctx: Context, c: Container, selector: dict[str, str], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": selector,
                            "ports": [{"name": "main", "port": c.port, "targetPort": "main"}]}
    if c.volumes:
        spec["clusterIP"] = "None"  # headless: the StatefulSet's stable DNS name
    return {"apiVersion": "v1", "kind": "Service", "metadata": ctx.meta(name), "spec": spec}


def api_budget(ctx: Context, replicas: int) -> dict[str, Any]:
    return budget(ctx, "api", replicas)


def budget(ctx: Context, component: str, replicas: int) -> dict[str, Any]:
    """Keep one pod of a component through voluntary disruptions (node drains) when there
    are several; with one pod a budget that kept it would block every drain."""
    limit = {"minAvailable": 1} if replicas > 1 else {"maxUnavailable": 1}
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": ctx.meta(component),
        "spec": {**limit, "selector": {"matchLabels": {
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/instance": ctx.namespace}}},
    }
