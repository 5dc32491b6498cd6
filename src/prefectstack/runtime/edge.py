"""What the edge leaves for people: the exported CA certificate and the first admin
password, shown once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefectstack.runtime import secrets

CA_SOURCE = Path("data/edge/data/pki/authorities/local/root.crt")
CA_EXPORT = "ca.crt"
SHOWN_MARKER = ".admin-password-shown"


def export_ca(state_dir: Path) -> Path:
    """Copy the internal CA's root certificate (public) to `<state dir>/ca.crt`."""
    target = state_dir / CA_EXPORT
    source = state_dir / CA_SOURCE
    if source.exists():
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    return target


def admin_password_once(state_dir: Path) -> str | None:
    """The bootstrap admin password the first time it is asked for, then never again."""
    marker = state_dir / SHOWN_MARKER
    if marker.exists():
        return None
    password = secrets.load(state_dir).get("admin_password")
    if password is None:
        return None
    marker.touch(mode=0o600)
    return password
