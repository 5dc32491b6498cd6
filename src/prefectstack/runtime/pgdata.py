"""Prepare a local PostgreSQL data directory: initdb once, as an unprivileged user."""

from __future__ import annotations

import os
import pwd
import shutil
import time
from pathlib import Path

from prefectstack import tools
from prefectstack.errors import StackError


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_os_user(name: str) -> pwd.struct_passwd:
    """The account, created on first use. Two stacks starting at once may both try: the
    loser's `useradd` fails (the account exists, or /etc/passwd is locked for a moment), so
    a failure counts only if the account still doesn't exist after a few tries."""
    for attempt in range(6):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        try:
            tools.run(["useradd", "--system", "--no-create-home",
                       "--shell", "/usr/sbin/nologin", name])
        except StackError:
            if attempt == 5:
                raise
            time.sleep(0.2 * (attempt + 1))  # another useradd holds /etc/passwd's lock
    return pwd.getpwnam(name)


def prepare(
    pgdata: Path, bin_dir: Path, os_user: str | None, superuser_password: str
) -> None:
    """initdb into a temporary directory and rename it into place on success, so an
    interrupted first start never leaves a half-made cluster behind."""
    user = None
    if is_root():
        assert os_user
        entry = ensure_os_user(os_user)
        user = entry.pw_name
    if (pgdata / "PG_VERSION").exists():
        _check_version(pgdata, bin_dir)
        if user:
            chown_tree(pgdata, os_user)  # e.g. after a restore done as root
        return
    tmp = pgdata.with_name(pgdata.name + ".initdb-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, mode=0o700)
    pwfile = tmp.parent / ".pwfile-initdb"
    try:
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(superuser_password + "\n")
        if user:
            chown_tree(tmp, os_user)
            shutil.chown(pwfile, user)
        tools.run(
            [str(bin_dir / "initdb"), "-D", str(tmp), "-U", "postgres",
             "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8",
             "--locale=C", "--data-checksums"],
            user=user,
            timeout=300,
        )
        tmp.rename(pgdata)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        pwfile.unlink(missing_ok=True)


def _check_version(pgdata: Path, bin_dir: Path) -> None:
    data_version = (pgdata / "PG_VERSION").read_text().strip()
    out = tools.run([str(bin_dir / "postgres"), "--version"]).stdout
    binary_major = out.split()[-1].split(".")[0] if out.split() else "?"
    # "postgres (PostgreSQL) 18.1" or "... 15.18 (Debian 15.18-0+deb12u1)"
    for token in out.split():
        if token[:1].isdigit():
            binary_major = token.split(".")[0]
            break
    if data_version != binary_major:
        raise StackError(
            f"{pgdata} holds a PostgreSQL {data_version} cluster but the binaries are "
            f"PostgreSQL {binary_major}",
            hint="use the matching postgres.mode, or back up with the old version and restore",
        )


def chown_tree(path: Path, user: str | None) -> None:
    if not user:
        return
    if path.is_file():
        os.chown(path, *ids(user))
        return
    if path.stat().st_uid == ids(user)[0] and not any(
        p.stat().st_uid != ids(user)[0] for p in path.iterdir()
    ):
        return  # already ours (the common case on a warm start): skip the walk
    for root, dirs, files in os.walk(path):
        shutil.chown(root, user, user)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), *ids(user))


def ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
