"""The backup CronJob, following the stack file's `backup` section (issue 13, item 12).

On `backup.schedule` (UTC) a Job dumps the Prefect database (`pg_dump --format=custom`,
written to a `.partial` name and renamed, so a half-written dump never looks like a backup)
onto the `backups` PersistentVolumeClaim, then prunes the dumps by `backup.keep` (the newest
of each of the last N days, ISO weeks and months: `jobs/backup_prune.py`). pg_dump comes
from the newest PostgreSQL image: it dumps every older server (the embedded one and an
external one alike), while an older pg_dump refuses a newer server.

A replicated auth service (`edge.ingress.auth_replicas` > 1, the default) keeps its state in
a schema of the same database: the dump covers it. A single auth pod's store (SQLite on its
ReadWriteOnce claim, which no other pod can mount) is fetched from the auth service in the
same Job: `GET /auth/backup` with the stack's `auth_backup_token` (auth/store_backup.py),
an online copy, `auth-STAMP.db`, with the audit log (kept in the store there). What it does
not cover, said in the README: the edge's storage (with `tls: edge`, its ACME state, which
the edge obtains again), `backup.encrypt` and `backup.s3` (the files stay unencrypted on the
claim) and the Secret (which your secret manager or these manifests hold).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefectstack.render import kubernetes_pods as pods
from prefectstack.render.common import APP_UID, POSTGRES_IMAGE
from prefectstack.render.kubernetes_pods import Context
from prefectstack.stack.model import Stack

FILE = "backup.yaml"
NAME = "backup"
CLAIM = "backups"
MOUNT = "/backups"
STORAGE = "20Gi"
PG_DUMP_IMAGE = POSTGRES_IMAGE  # pg_dump of the server's major version
URL = "PREFECTSTACK_DB_URL"
TOKEN = "PREFECTSTACK_AUTH_BACKUP_TOKEN"
AUTH_ADDRESS = "PREFECTSTACK_AUTH_ADDRESS"
PRUNE_MODULES = ("prefectstack/__init__.py", "prefectstack/errors.py",
                 "prefectstack/jobs/__init__.py", "prefectstack/jobs/backup_prune.py")

# Backticks, not `$(...)`: Kubernetes reads `$(NAME)` in a command as a variable reference.
DUMP_SCRIPT = f"""\
set -eu
file={MOUNT}/prefect-`date -u +%Y%m%dT%H%M%SZ`.dump
if ! pg_dump --format=custom --file="$file.partial" "${URL}"; then
  rm -f "$file.partial"
  echo "backup failed" >&2
  exit 1
fi
mv "$file.partial" "$file"
echo "backup written: $file"
"""


def enabled(stack: Stack) -> bool:
    return stack.backup.enabled


def objects(ctx: Context, stack: Stack) -> list[dict[str, Any]]:
    if not enabled(stack):
        return []
    claim = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": ctx.meta(CLAIM),
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": STORAGE}}},
    }
    return [claim, _cron_job(ctx, stack)]


def _labels(ctx: Context) -> dict[str, str]:
    return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": NAME,
            "app.kubernetes.io/instance": ctx.namespace, "app.kubernetes.io/part-of": pods.PART_OF}


def _dump(ctx: Context) -> dict[str, Any]:
    db_init = ctx.by_name["db-init"]  # the topology always has it; it holds the server URL
    source = replace(db_init, command=(), env={URL: db_init.env[URL]})
    return {
        "name": "dump",
        "image": PG_DUMP_IMAGE,
        "command": ["sh", "-c", DUMP_SCRIPT],
        "env": pods.env_list(ctx, source, source.env),
        "resources": pods.resources("other"),
        "securityContext": pods.container_security(),
        "volumeMounts": [{"name": CLAIM, "mountPath": MOUNT},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }


# The auth store, fetched from the auth service (its claim is the auth pod's alone): wget is
# in the image's busybox. The token comes from the Secret, never from the command line.
AUTH_SCRIPT = f"""\
set -eu
file={MOUNT}/auth-`date -u +%Y%m%dT%H%M%SZ`.db
if ! wget -q -O "$file.partial" --header "Authorization: Bearer ${{{TOKEN}}}" \\
    "http://${{{AUTH_ADDRESS}}}/auth/backup"; then
  rm -f "$file.partial"
  echo "backup of the auth store failed" >&2
  exit 1
fi
mv "$file.partial" "$file"
echo "backup written: $file"
"""


def _auth(ctx: Context) -> dict[str, Any] | None:
    auth = ctx.by_name.get("auth")
    if auth is None or TOKEN not in auth.env:
        return None
    source = replace(auth, command=(), env={TOKEN: auth.env[TOKEN]})
    return {
        "name": "auth",
        "image": PG_DUMP_IMAGE,
        "command": ["sh", "-c", AUTH_SCRIPT],
        "env": [*pods.env_list(ctx, source, source.env),
                {"name": AUTH_ADDRESS, "value": f"auth:{auth.port}"}],
        "resources": pods.resources("other"),
        "securityContext": pods.container_security(),
        "volumeMounts": [{"name": CLAIM, "mountPath": MOUNT},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }


def covers_auth(ctx: Context, stack: Stack) -> bool:
    return enabled(stack) and _auth(ctx) is not None


def _prune(ctx: Context, stack: Stack) -> dict[str, Any]:
    keep = stack.backup.keep
    spec: dict[str, Any] = {
        "name": "prune",
        "image": ctx.app_image,
        "command": ["python", "-m", "prefectstack.jobs.backup_prune", MOUNT,
                    "--daily", str(keep.daily), "--weekly", str(keep.weekly),
                    "--monthly", str(keep.monthly)],
        "resources": pods.resources("wait"),
        "securityContext": pods.container_security(),
        "volumeMounts": [{"name": CLAIM, "mountPath": MOUNT},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    if ctx.app_files is not None:  # the published image: our modules from the ConfigMap
        spec["env"] = [{"name": "PYTHONPATH", "value": pods.APP_CODE_DIR}]
        spec["volumeMounts"].append(pods.app_mounts()[1])
    return spec


def _cron_job(ctx: Context, stack: Stack) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": CLAIM, "persistentVolumeClaim": {"claimName": CLAIM}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if ctx.app_files is not None:  # the modules `prune` imports, not the whole app
        app = pods.app_volumes(ctx)[1]
        app["configMap"]["items"] = [i for i in app["configMap"]["items"]
                                     if i["path"] in PRUNE_MODULES]
        volumes.append(app)
    pod = {
        "automountServiceAccountToken": False,
        # Both containers run as the app's user: the dumps are its files, pruned by it.
        "securityContext": {"runAsNonRoot": True, "runAsUser": APP_UID, "runAsGroup": APP_UID,
                            "fsGroup": APP_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "restartPolicy": "OnFailure",
        "initContainers": [_dump(ctx), *([auth] if (auth := _auth(ctx)) else [])],
        "containers": [_prune(ctx, stack)],
        "volumes": volumes,
    }
    return {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": ctx.meta(NAME, _labels(ctx)),
        "spec": {
            "schedule": stack.backup.schedule,
            "timeZone": "Etc/UTC",  # the stack file's schedule is UTC
            "concurrencyPolicy": "Forbid",  # one writer on the claim
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 2,
                "template": {"metadata": {"labels": _labels(ctx)}, "spec": pod},
            }},
        },
    }


def readme(ctx: Context, stack: Stack) -> str:
    if not enabled(stack):
        return """
## Backups

None here: `backup.enabled` is false in the stack file.
"""
    keep = stack.backup.keep
    ignored = [key for key in ("encrypt", "s3") if getattr(stack.backup, key, None)]
    verb = "are" if len(ignored) > 1 else "is"
    extra = (f" The stack file's `backup.{'` and `backup.'.join(ignored)}` {verb} not applied "
             "here: the dumps stay unencrypted, on the claim only." if ignored else "")
    if covers_auth(ctx, stack):
        what = f"""dumps the Prefect database (`pg_dump --format=custom`,
`prefect-STAMP.dump`) and fetches an online copy of the auth service's store (users and API
keys and the audit log, `auth-STAMP.db`, from `GET /auth/backup` with the generated
`auth_backup_token`; the edge never forwards that path) onto the `{CLAIM}`
PersistentVolumeClaim ({STORAGE}) on `{stack.backup.schedule}` (UTC), then keeps the newest
of each kind for each of the last {keep.daily} days, {keep.weekly} ISO weeks and
{keep.monthly} months (`backup.keep`).{extra} It does not cover the edge's storage (with
`tls: edge`, its ACME state, which the edge obtains again) nor the Secret: keep a copy of
`secret.yaml`."""
    else:
        what = f"""dumps the Prefect database (`pg_dump --format=custom`,
`prefect-STAMP.dump`), which also holds the replicated auth service's users, API keys,
sessions and audit log (its own schema), onto the `{CLAIM}` PersistentVolumeClaim
({STORAGE}) on `{stack.backup.schedule}` (UTC), then keeps the newest for each of the last
{keep.daily} days, {keep.weekly} ISO weeks and {keep.monthly} months (`backup.keep`).{extra}
It does not cover the edge's storage (with `tls: edge`, its ACME state, which the edge
obtains again) nor the Secret: keep a copy of `secret.yaml`."""
    return f"""
## Backups

The `{NAME}` CronJob {what}
A backup now:

    kubectl -n {ctx.namespace} create job --from=cronjob/{NAME} {NAME}-now

Restore a dump with `pg_restore --clean --if-exists --dbname=URL FILE` while the API,
services and workers are scaled to zero.
"""
