"""What an unprivileged account can reach, and how the stack gives it what it can't, without
changing any permission outside the state dir.

Run as root, the supervisor starts PostgreSQL (which refuses root) and the edge as an
unprivileged account. That account must be able to search every directory on the way to
their programs and data. When a directory outside the state dir blocks it (root's 0700 home
with a pyenv or virtualenv inside, say), the program is linked (or copied) into the state
dir instead; nothing outside the state dir changes mode or owner.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from prefectstack import accounts
from prefectstack.errors import StackError

_MARKER = ".source.json"


_SEARCH = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
_READ = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
blocking_dir = accounts.blocking_dir
Check = Callable[[Path], bool]
"""whether an account can reach a path"""


def can_execute(path: Path, user: str) -> bool:
    uid, gids = accounts.ids(user)
    return blocking_dir(path, user) is None and accounts.allows(path.stat(), uid, gids)


def can_read_tree(path: Path, user: str) -> bool:
    """`user` can reach `path` and read (and search) the directory itself."""
    uid, gids = accounts.ids(user)
    st = path.stat()
    return (blocking_dir(path, user) is None and accounts.allows(st, uid, gids, _READ)
            and accounts.allows(st, uid, gids))


def _fingerprint(source: Path) -> dict[str, object]:
    st = source.stat()
    return {"source": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def linked_copy(source: Path, dest: Path, *, key: Path | None = None) -> Path:
    """`source` (a file or a directory tree) at `dest`: hard links where the filesystem
    allows, copies elsewhere, kept while `key` (default: `source`) is unchanged. Built
    beside `dest` and renamed into place, so a half-made copy is never used."""
    wanted = _fingerprint(key or source)
    marker = dest.parent / f".{dest.name}{_MARKER}"
    if dest.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()) == wanted:
                return dest
        except (OSError, ValueError):
            pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    remove(tmp)
    try:
        if source.is_dir():
            shutil.copytree(source, tmp, symlinks=True, copy_function=link_or_copy)
        else:
            link_or_copy(str(source), str(tmp))
    except OSError as exc:
        remove(tmp)
        raise StackError(f"could not copy {source} into {dest.parent}: {exc.strerror}",
                         hint="free some space in the state dir") from None
    remove(dest)
    os.replace(tmp, dest)
    marker.write_text(json.dumps(wanted))
    return dest


def link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def refresh_copy(source: Path, dest: Path) -> Path:
    """A plain copy of a small tree, refreshed on every call (files people edit)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    remove(tmp)
    shutil.copytree(source, tmp, symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
    remove(dest)
    os.replace(tmp, dest)
    return dest
