"""`prefectstack keys create|list|revoke`: API keys for machines (workers, CI, scripts)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from prefectstack import console
from prefectstack.auth.lifetime import parse_duration
from prefectstack.auth.roles import Role
from prefectstack.cli.access import open_store, record_cli, when
from prefectstack.cli.options import json_flag, stack_file

if TYPE_CHECKING:  # the store (argon2, sqlite3) loads only when a command runs
    from prefectstack.auth.store import ApiKey

@click.group()
def keys() -> None:
    """Manage API keys (shown once, stored hashed, revocable)."""


@keys.command("create")
@stack_file
@click.argument("name")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--expires-in", default=None, help="Lifetime, e.g. 90d (default: no expiry).")
@click.option("--pool", "pools", multiple=True,
              help="A worker key: the work pool it serves (repeat for several; default: any). "
                   "It may poll only these pools and change only their runs.")
def create(stack_path: str | None, name: str, role: str, expires_in: str | None,
           pools: tuple[str, ...]) -> None:
    """Create a key; it is printed once and only its hash is kept."""
    expires = time.time() + parse_duration(expires_in) if expires_in else None
    with open_store(stack_path) as store:
        key = store.create_key(name, Role(role), expires_at=expires, pools=pools or None)
    scope = "".join(f" --pool {p}" for p in sorted(set(pools)))
    record_cli(stack_path, f"keys create {name} --role {role}{scope}", key_prefix=key[:12])
    served = f", work pools {', '.join(sorted(set(pools)))}" if pools else ""
    if Role(role) is Role.WORKER and not pools:
        console.warn("this worker key serves every work pool: give it --pool for the pools "
                     "its machine serves, so a lost key can't take other pools' runs")
    console.out(f"created {role} key {key[:12]} ({name}{served}); the key, shown once:")
    console.out(key)


@keys.command("list")
@stack_file
@json_flag
def list_keys(stack_path: str | None, as_json: bool) -> None:
    """List keys by prefix (never the keys themselves)."""
    with open_store(stack_path) as store:
        found = store.keys()
    if as_json:
        console.json_out([asdict(k) | {"role": k.role.value} for k in found])
        return
    now = time.time()
    rows = [
        [k.prefix, k.name, k.role.value, when(k.created_at), when(k.expires_at),
         "revoked" if k.revoked_at else ("expired" if not k.usable(now) else "active"),
         when(k.last_used_at), _pools(k)]
        for k in found
    ]
    console.table(["prefix", "name", "role", "created", "expires", "state", "last used",
                   "pools"], rows)


def _pools(key: ApiKey) -> str:
    if key.role is not Role.WORKER:
        return "-"
    return "any" if key.pools is None else ", ".join(key.pools) or "none"


@keys.command("revoke")
@stack_file
@click.argument("prefix")
def revoke(stack_path: str | None, prefix: str) -> None:
    """Revoke a key by its prefix (pfs_xxxxxxxx); it stops working at once."""
    with open_store(stack_path) as store:
        store.revoke_key(prefix)
    record_cli(stack_path, f"keys revoke {prefix}", key_prefix=prefix)
    console.out(f"revoked {prefix}")


COMMANDS = [keys]
