"""Backups encrypted with age (pyrage, the Rust `rage` implementation): to public keys from
the stack file, decrypted with a private key file. Files of the standard format, so the
`age` CLI decrypts them too (`age -d -i KEY FILE.tar.age > FILE.tar`). pyrage streams both
ways (its memory stays flat, ~15 MB, whatever the backup's size)."""

from __future__ import annotations

import contextlib
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefectstack.errors import StackError
from prefectstack.stack.loader import LoadedStack

MAGIC = b"age-encryption.org/v1\n"
SUFFIX = ".age"


def is_encrypted(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC


def _new_private_file(path: Path) -> None:
    """An empty 0600 file that did not exist, for pyrage to fill: it keeps the mode."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def encrypt(src: Path, dst: Path, recipients: list[str]) -> None:
    import pyrage
    from pyrage import x25519

    keys = [x25519.Recipient.from_str(r) for r in recipients]  # checked by the stack model
    _new_private_file(dst)
    try:
        pyrage.encrypt_file(str(src), str(dst), keys)
        _fsync(dst)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def load_identities(path: Path) -> list[Any]:
    """The private keys of an age identity file (`age-keygen -o` format: comments and
    `AGE-SECRET-KEY-1...` lines). Refused when others may read it."""
    from pyrage import IdentityError, x25519

    try:
        info = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        raise StackError(f"the age identity file {path} does not exist",
                         hint="set backup.encrypt.identity_file to the private key that "
                              "matches one of backup.encrypt.recipients") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StackError(f"the age identity file {path} is readable by others "
                         f"(mode {stat.S_IMODE(info.st_mode):o})",
                         hint=f"chmod 600 {path}")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    keys = []
    for number, line in enumerate(lines, 1):
        try:
            keys.append(x25519.Identity.from_str(line))
        except IdentityError:
            raise StackError(f"{path}: key {number} is not an age private key "
                             "(`AGE-SECRET-KEY-1...`)",
                             hint="give the file `age-keygen -o` or `prefectstack backup "
                                  "keygen` wrote") from None
    if not keys:
        raise StackError(f"{path} holds no age private key")
    return keys


def decrypt(src: Path, dst: Path, identity_file: Path | None) -> None:
    """Decrypt `src` into a new 0600 file `dst`; a wrong or missing key is a clear error and
    leaves no `dst` behind."""
    import pyrage

    if identity_file is None:
        raise StackError(f"{src} is encrypted (age) and no key to decrypt it is configured",
                         hint="set backup.encrypt.identity_file in the stack file to the "
                              "private key file")
    keys = load_identities(identity_file)
    _new_private_file(dst)
    try:
        pyrage.decrypt_file(str(src), str(dst), keys)
    except pyrage.DecryptError as exc:
        dst.unlink(missing_ok=True)
        raise StackError(f"{src}: cannot decrypt it with the key in {identity_file} ({exc})",
                         hint="the backup was encrypted to another key, or it is damaged; "
                              "nothing was changed") from None
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def identity_file(loaded: LoadedStack) -> Path | None:
    """The stack's configured private key file, if any (relative to the stack file)."""
    encryption = loaded.stack.backup.encrypt
    if encryption is None or encryption.identity_file is None:
        return None
    return (loaded.base_dir / Path(encryption.identity_file).expanduser()).resolve()


def keygen(path: Path) -> str:
    """Write a new age private key to `path` (0600, never over an existing file) in
    age-keygen's format; return its public key."""
    from pyrage import x25519

    key = x25519.Identity.generate()
    public = str(key.to_public())
    when = datetime.now(UTC).replace(microsecond=0).isoformat()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StackError(f"{path} exists; a key is never overwritten",
                         hint="choose another path") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# created: {when}\n# public key: {public}\n{key}\n")
        fh.flush()
        os.fsync(fh.fileno())
    return public


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, fd)
        os.fsync(fd)
