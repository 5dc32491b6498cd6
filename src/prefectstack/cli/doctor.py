"""`prefectstack doctor`: check a stack, running or not, and say what to run next.

Each check gathers a few facts from the host (ports, modes, disk, installed versions, the
status snapshot, log tails, certificates, the key store) and hands them to a pure function
that turns them into a `Check`: ok, warn or fail, what was found, and the next command.
"""

from __future__ import annotations

import re
import shutil
import stat
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import click

from prefectstack import console, lock
from prefectstack.cli.options import json_flag, stack_file
from prefectstack.layout import Layout

Status = Literal["ok", "warn", "fail"]
EXIT_CLEAN, EXIT_WARN, EXIT_FAIL = 0, 4, 5
GIB = 1 << 30
LOG_TAIL_BYTES = 64 * 1024
DAY = 86400.0

# An ERROR record, a traceback or a dropped docket task (the same signs the tests look for).
_PROBLEM = re.compile(r"\| (ERROR|CRITICAL) +\||\] (ERROR|FATAL|PANIC): |^Traceback |Unknown task")
# Expected in a healthy stack: Prefect creates work pools "if missing" by inserting and
# answering 409 on the unique violation (the `pools` one-shot and the worker race), and
# PostgreSQL logs the queries a stopping API process cancels.
_BENIGN = re.compile(r"duplicate key value violates unique constraint"
                     r"|canceling statement due to user request")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    summary: str
    details: tuple[str, ...] = ()
    next: str = ""
    """the command (or action) to run next when the check is not ok"""


@dataclass(frozen=True)
class Port:
    service: str
    port: int
    free: bool
    holder: str = ""


@dataclass(frozen=True)
class FileMode:
    path: str
    mode: int


@dataclass(frozen=True)
class Cert:
    path: str
    not_after: float
    is_ca: bool
    """the edge's root CA (self-signed, long-lived): Caddy renews the others itself"""


@dataclass(frozen=True)
class Key:
    prefix: str
    name: str
    expires_at: float | None
    revoked: bool


@dataclass
class Facts:
    """Everything the pure checks look at (gathered by `gather`)."""

    running: bool
    ports: list[Port] = field(default_factory=list)
    state_dir: FileMode | None = None
    secrets: list[FileMode] = field(default_factory=list)
    disk_free: int = 0
    disk_total: int = 1
    drift: list[str] = field(default_factory=list)
    lock_found: bool = True
    status: dict[str, Any] = field(default_factory=dict)
    log_problems: dict[str, list[str]] = field(default_factory=dict)
    certs: list[Cert] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)
    now: float = 0.0


# -- pure checks -----------------------------------------------------------------------------


def check_ports(ports: Iterable[Port], running: bool) -> Check:
    if running:
        idle = [f"{p.service}: nothing listens on port {p.port}" for p in ports if p.free]
        if idle:
            return Check("ports", "fail", "a running service does not listen on its port",
                         tuple(idle), "prefectstack status; prefectstack logs SERVICE")
        return Check("ports", "ok", "every service listens on its port")
    held = [f"{p.service}: port {p.port} is in use by {p.holder or 'another process'}"
            for p in ports if not p.free]
    if held:
        return Check("ports", "fail", "ports the stack needs are taken", tuple(held),
                     "stop that process, or choose another port in stack.yaml")
    return Check("ports", "ok", "every port the stack binds is free")


def check_state_dir(mode: FileMode | None) -> Check:
    if mode is None:
        return Check("state-dir", "ok", "no state dir yet (`prefectstack up` creates it)")
    if mode.mode & (stat.S_IWGRP | stat.S_IWOTH):
        return Check("state-dir", "fail", f"{mode.path} is writable by other users",
                     (f"mode {mode.mode & 0o7777:04o}",), f"chmod go-w {mode.path}")
    return Check("state-dir", "ok", f"{mode.path} is writable by its owner only")


def check_secrets(files: Iterable[FileMode]) -> Check:
    files = list(files)
    if not files:
        return Check("secrets", "ok", "no secret files yet")
    loose = [f for f in files if f.mode & 0o077]
    if loose:
        return Check("secrets", "fail", "secret files are readable by other users",
                     tuple(f"{f.path}: mode {f.mode & 0o7777:04o}" for f in loose),
                     "chmod 600 " + " ".join(f.path for f in loose))
    return Check("secrets", "ok", "secret files are 0600")


def check_disk(free: int, total: int) -> Check:
    share = free / total if total else 0.0
    found = f"{free / GIB:.1f} GiB free ({share:.0%})"
    if free < GIB // 5:
        return Check("disk", "fail", f"the state dir's disk is nearly full: {found}",
                     next="free some space (old logs, backups) on the state dir's disk")
    if free < GIB or share < 0.05:
        return Check("disk", "warn", f"the state dir's disk is low: {found}",
                     next="free some space (old logs, backups) on the state dir's disk")
    return Check("disk", "ok", found)


def check_dependencies(drift: list[str], lock_found: bool) -> Check:
    if not lock_found:
        return Check("dependencies", "ok", "no requirements.lock beside this install to compare")
    if drift:
        return Check("dependencies", "fail", "installed versions differ from requirements.lock",
                     tuple(drift), "pip install -r requirements.lock")
    return Check("dependencies", "ok", "installed versions match requirements.lock")


def check_services(snapshot: Mapping[str, Any]) -> Check:
    health = snapshot.get("health", "stopped")
    if health == "stopped":
        return Check("services", "ok", "the stack is not running",
                     next="prefectstack up --detach")
    if health == "healthy":
        return Check("services", "ok", "every service is ready and healthy")
    bad = [f"{s.get('name', s.get('service'))}: {s.get('state')}"
           + (f" ({s['detail']})" if s.get("detail") else "")
           for s in snapshot.get("services", [])
           if s.get("state") not in ("ready", "completed", "running")
           or s.get("healthy") is False or s.get("degraded")]
    if health == "stale":
        return Check("services", "fail", "the supervisor is gone and left its state behind",
                     tuple(bad), "prefectstack down, then prefectstack up --detach")
    first = bad[0].split(":", 1)[0] if bad else "SERVICE"
    return Check("services", "fail" if health == "failed" else "warn",
                 f"the stack is {health}", tuple(bad), f"prefectstack logs {first}")


def log_problems(text: str) -> list[str]:
    """Problem lines of a log tail (an ERROR record, a traceback, a dropped task)."""
    return [line[:300] for line in text.splitlines()
            if _PROBLEM.search(line) and not _BENIGN.search(line)]


def check_logs(problems: Mapping[str, list[str]]) -> Check:
    found = {svc: lines for svc, lines in problems.items() if lines}
    if not found:
        return Check("logs", "ok", "no recent errors or tracebacks in the service logs")
    details = tuple(f"{svc}: {len(lines)} problem line(s), last: {lines[-1]}"
                    for svc, lines in sorted(found.items()))
    worst = max(found, key=lambda svc: len(found[svc]))
    return Check("logs", "warn", "recent errors or tracebacks in the service logs", details,
                 f"prefectstack logs {worst}")


def check_certificates(certs: Iterable[Cert], now: float, running: bool) -> Check:
    certs = list(certs)
    if not certs:
        return Check("certificates", "ok", "no edge certificate issued yet")
    fails: list[str] = []
    warns: list[str] = []
    for cert in certs:
        left = (cert.not_after - now) / DAY
        what = f"{cert.path}: {'CA' if cert.is_ca else 'certificate'} "
        if left <= 0:
            # Caddy renews its leaf certificates itself, at start and while it runs.
            (fails if cert.is_ca or running else []).append(what + "has expired")
        elif cert.is_ca and left < 30:
            warns.append(what + f"expires in {left:.0f} days")
    if fails:
        return Check("certificates", "fail", "an edge certificate has expired", tuple(fails),
                     "prefectstack down; remove the edge's data/pki and data/certificates "
                     "under the state dir; prefectstack up --detach (clients re-trust ca.crt)")
    if warns:
        return Check("certificates", "warn", "the edge's CA expires soon", tuple(warns),
                     "plan a CA rotation: clients must trust the new ca.crt")
    return Check("certificates", "ok", f"{len(certs)} edge certificate(s) valid")


def check_keys(keys: Iterable[Key], now: float, soon_days: float = 7) -> Check:
    soon = [f"{k.prefix} ({k.name}) expires in {(k.expires_at - now) / DAY:.1f} days"
            for k in keys
            if not k.revoked and k.expires_at is not None and 0 < k.expires_at - now
            < soon_days * DAY]
    if soon:
        return Check("api-keys", "warn", "API keys expire soon", tuple(soon),
                     "prefectstack keys create NAME --role ROLE (then revoke the old one)")
    return Check("api-keys", "ok", "no API key expires within a week")


def run_checks(facts: Facts) -> list[Check]:
    return [
        check_ports(facts.ports, facts.running),
        check_state_dir(facts.state_dir),
        check_secrets(facts.secrets),
        check_disk(facts.disk_free, facts.disk_total),
        check_dependencies(facts.drift, facts.lock_found),
        check_services(facts.status),
        check_logs(facts.log_problems),
        check_certificates(facts.certs, facts.now, facts.running),
        check_keys(facts.keys, facts.now),
    ]


def exit_code(checks: Iterable[Check]) -> int:
    states = {c.status for c in checks}
    return EXIT_FAIL if "fail" in states else EXIT_WARN if "warn" in states else EXIT_CLEAN


# -- facts from the host ---------------------------------------------------------------------


def _mode(path: Path) -> FileMode | None:
    try:
        return FileMode(str(path), path.stat().st_mode)
    except OSError:
        return None


def _ports(stack_path: str | None, running: bool) -> list[Port]:
    from prefectstack import topology
    from prefectstack.runtime import ports
    from prefectstack.stack.loader import load_stack

    stack = load_stack(stack_path).stack
    out = []
    for svc in topology.build(stack):
        for port in svc.ports:
            hosts = ports.bind_addresses(svc, stack.edge.listen_addresses)
            # Running, one bound address is enough; stopped, every address must be free.
            free = all(ports.is_free(port, h) for h in hosts) if not running else all(
                ports.is_free(port, h) for h in hosts[:1])
            out.append(Port(svc.name, port, free, "" if free else ports.holder(port)))
    return out


def _drift() -> tuple[list[str], bool]:
    import prefectstack

    file = Path(prefectstack.__file__).resolve().parents[2] / "requirements.lock"
    if not file.is_file():
        return [], False
    locked = lock.parse(file.read_text())
    current = {}
    for name in locked:
        dist = lock.installed(name)
        if dist is not None:  # absent: an extra this install does not use
            current[name] = dist.version
    return [str(d) for d in lock.diff(locked, current) if d.installed is not None], True


def _log_problems(logs: Path) -> dict[str, list[str]]:
    out = {}
    for path in sorted(logs.glob("*.log")):
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
                out[path.stem] = log_problems(f.read().decode(errors="replace"))
        except OSError:
            continue
    return out


def _certs(layout: Layout) -> list[Cert]:
    from cryptography import x509

    edge = layout.volume("edge") / "data"
    paths = [*sorted((edge / "pki").rglob("*.crt")), *sorted((edge / "certificates").rglob(
        "*.crt"))]
    out = []
    for path in paths:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
        # Only the root (self-signed) is ours to rotate: Caddy renews its intermediate
        # (7 days) and leaf (12 hours) certificates itself.
        is_root = cert.subject == cert.issuer
        out.append(Cert(str(path), cert.not_valid_after_utc.timestamp(), is_root))
    return out


def _keys(layout: Layout) -> list[Key]:
    from prefectstack.auth.store import DB_FILE, Store

    if not (layout.auth_dir / DB_FILE).exists():
        return []
    store = Store(layout.auth_dir)
    try:
        return [Key(k.prefix, k.name, k.expires_at, k.revoked_at is not None)
                for k in store.keys()]  # noqa: SIM118 (a method, not a dict)
    finally:
        store.close()


def _status(state_dir: Path) -> dict[str, Any]:
    from prefectstack.cli.status import snapshot
    from prefectstack.runtime import backend

    if not state_dir.is_dir():  # never run here: create nothing (status would)
        return {"health": "stopped", "services": []}
    record = backend.read(state_dir)
    if record.backend == backend.COMPOSE:
        from prefectstack.runtime import compose

        return dict(compose.snapshot(state_dir, record))
    return snapshot(state_dir)


def gather(stack_path: str | None) -> Facts:
    from prefectstack.stack.loader import locate_state_dir

    state_dir = locate_state_dir(stack_path)
    layout = Layout(state_dir)
    status = _status(state_dir)
    running = status.get("health", "stopped") != "stopped" and not status.get("stale")
    existing = next(p for p in (state_dir, *state_dir.parents) if p.exists())
    usage = shutil.disk_usage(existing)
    drift, lock_found = _drift()
    from prefectstack.auth.store import DB_FILE

    secret_files = [layout.secrets_file, layout.auth_dir / DB_FILE]
    return Facts(
        running=running,
        ports=_ports(stack_path, running),
        state_dir=_mode(state_dir),
        secrets=[m for p in secret_files if (m := _mode(p))],
        disk_free=usage.free, disk_total=usage.total,
        drift=drift, lock_found=lock_found,
        status=status,
        log_problems=_log_problems(layout.logs),
        certs=_certs(layout),
        keys=_keys(layout),
        now=time.time(),
    )


@click.command()
@stack_file
@json_flag
def doctor(stack_path: str | None, as_json: bool) -> None:
    """Check the stack (running or not) and say what to run next for each problem.

    \b
    Checks: ports, state dir and secret file permissions, disk space, installed
    versions against requirements.lock, services, recent errors in the service logs,
    the edge's certificates and API key expiry.
    Exit codes: 0 clean, 4 warnings only, 5 a check failed.
    """
    checks = run_checks(gather(stack_path))
    code = exit_code(checks)
    if as_json:
        console.json_out({"ok": code == EXIT_CLEAN, "checks": [asdict(c) for c in checks]})
    else:
        for c in checks:
            console.out(f"{c.status:4}  {c.name:12}  {c.summary}")
            for line in c.details:
                console.out(f"              {line}")
            if c.status != "ok" and c.next:
                console.out(f"              next: {c.next}")
    if code:
        sys.exit(code)


COMMANDS = [doctor]
