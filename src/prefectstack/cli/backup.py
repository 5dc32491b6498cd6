"""`prefectstack backup`, `backup list` and `restore`: the stack's data, saved and brought
back (see runtime/backup.py and runtime/restore.py)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from prefectstack import console
from prefectstack.cli.options import json_flag, stack_file
from prefectstack.errors import StackError


def age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def size(num: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num < 1000 or unit == "GB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1000
    return f"{num:.1f} GB"


@click.group(invoke_without_command=True)
@stack_file
@click.option("--to", "to", type=click.Path(file_okay=False),
              help="Directory to write the backup to (default: backup.destination, else "
                   "<state_dir>/backups).")
@json_flag
@click.pass_context
def backup(ctx: click.Context, stack_path: str | None, to: str | None, as_json: bool) -> None:
    """Back up the running stack into one file: database, users and API keys, the edge's CA,
    secrets, the stack file and a manifest (versions, checksums, row counts). Mode 0600.
    Encrypted with age when the stack file has backup.encrypt; copied to a bucket when it
    has backup.s3."""
    if ctx.invoked_subcommand:
        return
    from prefectstack.runtime import backup as backups
    from prefectstack.stack.loader import load_stack

    loaded = load_stack(stack_path)
    result = backups.create(loaded, Path(to) if to else None)
    if as_json:
        console.json_out({"file": str(result.path), "size_bytes": result.size,
                          "seconds": round(result.seconds, 2), "pruned": result.pruned,
                          "encrypted": result.path.name.endswith(".age"),
                          "remote": result.remote, "pruned_remote": result.pruned_remote,
                          "manifest": asdict(result.manifest)})
        return
    runs = result.manifest.row_counts.get("flow_run", 0)
    encrypted = ", encrypted" if result.path.name.endswith(".age") else ""
    console.out(f"backup written: {result.path} ({size(result.size)}, {runs} flow runs"
                f"{encrypted}, {result.seconds:.1f}s)")
    if result.remote:
        console.out(f"  copied to {result.remote}")
    for name in result.pruned + result.pruned_remote:
        console.out(f"  pruned {name} (beyond backup.keep)")


@backup.command("list")
@stack_file
@json_flag
def list_backups(stack_path: str | None, as_json: bool) -> None:
    """Show this stack's backups in its backup destination, and their copies in the bucket
    of backup.s3, newest first."""
    from prefectstack.runtime import backup as backups
    from prefectstack.stack.loader import load_stack

    loaded = load_stack(stack_path)
    dest = backups.destination(loaded)
    entries = backups.listing(dest, loaded.stack.name)
    if loaded.stack.backup.s3 is not None:
        from prefectstack.runtime import backup_s3

        entries = sorted(entries + backup_s3.listing(loaded),
                         key=lambda e: (e["created_at"], e["location"]), reverse=True)
    if as_json:
        console.json_out({"destination": str(dest), "backups": entries,
                          "last": backups.last_status(loaded.state_dir)})
        return
    if not entries:
        console.out(f"no backups in {dest}")
        return
    rows = [[e["file"] if e["location"] == "s3" else Path(e["file"]).name,
             age(e["age_seconds"]) + " ago", size(e["size_bytes"]), describe(e)]
            for e in entries]
    console.table(["backup", "age", "size", "prefect"], rows)


def describe(entry: dict[str, Any]) -> str:
    if entry.get("valid") is False:
        return f"DAMAGED: {entry['error']}"
    if entry.get("encrypted"):
        return "encrypted (age)"
    return str(entry.get("prefect_version", "-"))


@backup.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False))
def keygen(path: str) -> None:
    """Write a new age private key to PATH (0600; never over an existing file) and print its
    public key, for backup.encrypt.recipients. Keep PATH off this machine too: without it
    no encrypted backup can be restored. `age-keygen -o PATH` does the same."""
    from prefectstack.runtime import backup_crypt

    public = backup_crypt.keygen(Path(path))
    console.out(f"private key written to {path} (keep a copy somewhere safe)")
    console.out(f"public key (for backup.encrypt.recipients): {public}")


@click.command()
@click.argument("archive")
@stack_file
@click.option("-y", "--yes", is_flag=True, help="Do not ask before replacing the data.")
@json_flag
def restore(archive: str, stack_path: str | None, yes: bool, as_json: bool) -> None:
    """Restore a backup into the stopped stack: checks the file whole first, rebuilds the
    database beside the old one, then swaps it in (the old data is kept in
    <state_dir>/restore-previous/).

    ARCHIVE is a backup file, or s3://BUCKET/KEY for a copy in the bucket of backup.s3
    (fetched with its endpoint and credentials). An encrypted backup (.tar.age) is decrypted
    with the private key file of backup.encrypt.identity_file."""
    from prefectstack.runtime import restore as restoring
    from prefectstack.stack.loader import load_stack

    loaded = load_stack(stack_path)
    if not yes:
        console.out(f"This replaces the data of the stack `{loaded.stack.name}` in "
                    f"{loaded.state_dir} (database, users and API keys, the edge's CA, "
                    f"secrets) with the backup {archive}.")
        if not console.confirm("Restore?"):
            raise StackError("nothing restored", hint="pass --yes to restore without asking")
    report = restoring.restore(loaded, archive)
    data: dict[str, Any] = {
        "file": str(report.archive), "seconds": round(report.seconds, 2),
        "previous": str(report.previous) if report.previous else None, "notes": report.notes,
        "manifest": asdict(report.manifest),
    }
    if as_json:
        console.json_out(data)
        return
    runs = report.manifest.row_counts.get("flow_run", 0)
    console.out(f"restored {report.archive} (made {report.manifest.created_at}, "
                f"{runs} flow runs; every table's row count checked) in {report.seconds:.1f}s")
    if report.previous:
        console.out(f"the replaced data is in {report.previous}")
    for note in report.notes:
        console.warn(note)
    console.out("start the stack with `prefectstack up`")


def last_backup(state_dir: Path) -> dict[str, Any] | None:
    """For `status --json`: the last backup's outcome (`ok`, `at`, `path` or `error`)."""
    from prefectstack.runtime import backup as backups

    return backups.last_status(state_dir)


def last_backup_line(state_dir: Path) -> str | None:
    """For `status`: the last backup's age, or its failure."""
    from prefectstack.runtime import backup as backups

    last = backups.last_status(state_dir)
    if not last:
        return None
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(str(last.get("at"))).timestamp()
    except ValueError:
        return None
    ago = age(time.time() - when)
    if not last.get("ok"):
        return f"last backup FAILED {ago} ago: {last.get('error', '')}"
    if backups.overdue(last, datetime.now(UTC)):
        return (f"last backup: {ago} ago, OVERDUE for its schedule `{last.get('schedule')}` "
                f"({last.get('path')}); run `prefectstack backup`")
    return f"last backup: {ago} ago ({last.get('path')})"


COMMANDS = [backup, restore]
