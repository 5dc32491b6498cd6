"""First-run identities: the bootstrap admin and the stack's own service keys.

Both follow the secrets rule: generated once, stored 0600, never regenerated while they
still work, and returned to the caller only when new so it can show them once.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from prefectstack.auth.roles import Role
from prefectstack.auth.store import Store
from prefectstack.errors import StackError
from prefectstack.runtime.secrets import write_private

ADMIN_USERNAME = "admin"


def bootstrap_admin(store: Store, password_file: Path) -> str | None:
    """Create `admin` with a generated password when there are no users yet.

    Returns the password the one time it is created (also written to `password_file`, 0600),
    and None afterwards.
    """
    if store.users():
        return None
    password = secrets.token_urlsafe(18)
    write_private(password_file, password + "\n")
    store.add_user(ADMIN_USERNAME, Role.ADMIN, password)
    return password


def ensure_service_key(store: Store, name: str, role: Role, key_file: Path) -> str | None:
    """Give a service of the stack (a worker, the exporter) a key of its own.

    The key lives in `key_file` (0600) for the service's environment. A new key is made when
    the file is missing or its key no longer works (revoked, expired); returns the key when
    it is new, else None.
    """
    if key_file.exists():
        current = key_file.read_text().strip()
        identity = store.verify_key(current)
        if identity is not None and identity.role is role:
            return None
        if identity is not None:
            raise StackError(
                f"{key_file} holds a {identity.role.value} key, expected {role.value}",
                hint=f"revoke {identity.key_prefix} and remove the file",
            )
    key = store.create_key(name, role)
    write_private(key_file, key + "\n")
    return key
