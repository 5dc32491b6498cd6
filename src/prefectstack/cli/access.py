"""Shared by `users`, `keys` and `audit`: open the auth store of a stack's state dir.

The store belongs to the account the auth service runs as (whoever started the stack); a
CLI run as root hands every file it touched back to the owner of the store's directory, or
the service could no longer write its own database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefectstack.layout import Layout

if TYPE_CHECKING:
    from prefectstack.auth.store import Store


@contextmanager
def open_store(stack_path: str | None) -> Iterator[Store]:
    from prefectstack.auth.store import Store
    from prefectstack.runtime import pgdata
    from prefectstack.stack.loader import load_stack

    loaded = load_stack(stack_path)
    directory = Layout(loaded.state_dir).auth_dir
    owner = _owner(directory)
    store = Store(directory)
    try:
        yield store
    finally:
        store.close()
        if pgdata.is_root() and owner:
            for path in [directory, *directory.iterdir()]:
                os.chown(path, *owner)


def record_cli(stack_path: str | None, action: str, key_prefix: str | None = None) -> None:
    """Audit a change made from the command line (users and keys), like one made through the
    edge: who ran it (the OS account), what changed, never a secret."""
    import getpass

    from prefectstack.auth.audit import AuditLog, Record, now_iso
    from prefectstack.runtime import pgdata
    from prefectstack.stack.loader import load_stack

    loaded = load_stack(stack_path)
    log = Layout(loaded.state_dir).audit_file
    AuditLog(log).write(Record(
        time=now_iso(), identity=f"cli:{getpass.getuser()}", role="admin", method="CLI",
        path=action, status=200, client="local", key_prefix=key_prefix,
        reason="changed from the prefectstack command line"))
    owner = _owner(log.parent)
    if pgdata.is_root() and owner:
        os.chown(log, *owner)


def _owner(directory: Path) -> tuple[int, int] | None:
    """Who owns an existing store directory (None: not there yet, or root's)."""
    try:
        st = directory.stat()
    except FileNotFoundError:
        return None
    return (st.st_uid, st.st_gid) if st.st_uid != 0 else None


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")
