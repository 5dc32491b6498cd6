"""Whether an OS account can reach a path: searched (x) on every directory on the way.
Pure reads of the file system (stat), stdlib only: the stack loader and the runtime both ask."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

_SEARCH = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
FLOWS_SUFFIX = "-flows"


def flows_account(os_user: str) -> str:
    """The account the workers, and so every flow run, run as when the stack runs as root:
    `<postgres.os_user>-flows` (`prefectstack-flows`), an account of its own, so that flow
    code can read neither PostgreSQL's data nor what the edge keeps (its CA key)."""
    return f"{os_user}{FLOWS_SUFFIX}"


def ids(user: str) -> tuple[int | None, set[int]]:
    """The account's uid and groups; (None, {}) for an account that doesn't exist yet (it
    will be created as a system account with no group of anyone else's)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None, set()
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    return entry.pw_uid, groups


def allows(st: os.stat_result, uid: int | None, gids: set[int],
           bits: tuple[int, int, int] = _SEARCH) -> bool:
    owner, group, other = bits
    if uid is not None and st.st_uid == uid:
        return bool(st.st_mode & owner)
    if st.st_gid in gids:
        return bool(st.st_mode & group)
    return bool(st.st_mode & other)


def blocking_dir(path: Path, user: str) -> Path | None:
    """The first existing directory on the way to `path` (its ancestors, from the root down)
    that `user` may not search, else None. `path` itself is not checked."""
    uid, gids = ids(user)
    if uid == 0:
        return None
    for directory in reversed(Path(os.path.abspath(path)).parents):
        try:
            st = directory.stat()
        except FileNotFoundError:
            return None  # created later, by whoever runs the stack
        if not allows(st, uid, gids):
            return directory
    return None
