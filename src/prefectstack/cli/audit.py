"""`prefectstack audit`: who changed what, and every refused request."""

from __future__ import annotations

import click

from prefectstack import console
from prefectstack.cli.options import json_flag, stack_file
from prefectstack.layout import Layout


@click.command()
@stack_file
@click.option("--user", default=None, help="A username, a key prefix, or key:<prefix>.")
@click.option("--since", default=None, help="A duration (30m, 2h, 7d) or an ISO time.")
@click.option("-n", "--limit", default=200, show_default=True, help="Newest N records.")
@json_flag
def audit(
    stack_path: str | None, user: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """Show the audit log: changes made and requests refused."""
    from dataclasses import asdict

    from prefectstack.auth import audit as audit_log
    from prefectstack.stack.loader import locate_state_dir

    path = Layout(locate_state_dir(stack_path)).audit_file
    moment = audit_log.parse_since(since) if since else None
    records = list(audit_log.read(path, user=user, since=moment))[-limit:]
    if as_json:
        console.json_out([asdict(r) for r in records])
        return
    rows = [
        [audit_log.printable(cell) for cell in (
            r.time[:19].replace("T", " "), r.identity or "-", r.role or "-", str(r.status),
            r.method, r.path, r.client or "-")]
        for r in records
    ]
    console.table(["time", "identity", "role", "status", "method", "path", "client"], rows)


COMMANDS = [audit]
