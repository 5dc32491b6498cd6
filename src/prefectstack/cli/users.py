"""`prefectstack users add|list|remove|passwd`: people who sign in to the UI and API."""

from __future__ import annotations

import secrets
import sys
from dataclasses import asdict

import click

from prefectstack import console
from prefectstack.auth.roles import Role
from prefectstack.cli.access import open_store, record_cli, when
from prefectstack.cli.options import json_flag, stack_file

HUMAN_ROLES = [r.value for r in Role if r is not Role.WORKER]


def _password(from_stdin: bool) -> tuple[str, bool]:
    """The password from stdin, or a generated one (then shown once)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    return secrets.token_urlsafe(18), True


@click.group()
def users() -> None:
    """Manage user accounts (stored hashed with argon2id in the state dir)."""


@users.command("add")
@stack_file
@click.argument("username")
@click.option("--role", type=click.Choice(HUMAN_ROLES), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
def add(stack_path: str | None, username: str, role: str, password_stdin: bool) -> None:
    """Add a user; without --password-stdin a password is generated and shown once."""
    password, generated = _password(password_stdin)
    with open_store(stack_path) as store:
        store.add_user(username, Role(role), password)
    record_cli(stack_path, f"users add {username} --role {role}")
    console.out(f"added {username} ({role})")
    if generated:
        console.out(f"password (shown once): {password}")


@users.command("list")
@stack_file
@json_flag
def list_users(stack_path: str | None, as_json: bool) -> None:
    """List users and their roles."""
    with open_store(stack_path) as store:
        found = store.users()
    if as_json:
        console.json_out([asdict(u) | {"role": u.role.value} for u in found])
        return
    console.table(["user", "role", "created"],
                  [[u.username, u.role.value, when(u.created_at)] for u in found])


@users.command("remove")
@stack_file
@click.argument("username")
def remove(stack_path: str | None, username: str) -> None:
    """Remove a user (their sessions end at once)."""
    with open_store(stack_path) as store:
        store.remove_user(username)
    record_cli(stack_path, f"users remove {username}")
    console.out(f"removed {username}")


@users.command("passwd")
@stack_file
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
def passwd(stack_path: str | None, username: str, password_stdin: bool) -> None:
    """Set a new password (generated and shown once unless --password-stdin)."""
    password, generated = _password(password_stdin)
    with open_store(stack_path) as store:
        store.set_password(username, password)
    record_cli(stack_path, f"users passwd {username}")
    console.out(f"password of {username} changed; their sessions ended")
    if generated:
        console.out(f"new password (shown once): {password}")


COMMANDS = [users]
