"""The 0600 store of the stack's generated secrets (`secrets.json`): generated once, reused,
never printed. (Not Prefect's Secret blocks that deployments declare: see deploy/.)"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from prefectstack.apikeys import new_api_key
from prefectstack.errors import StackError
from prefectstack.layout import SECRETS_FILE
from prefectstack.runtime.files import write_atomic


def _write_private(path: Path, text: str) -> None:
    """Atomically, and 0600 from the first byte (no window with wider access)."""
    write_atomic(path, text, 0o600)


def load(state_dir: Path) -> dict[str, str]:
    path = state_dir / SECRETS_FILE
    if not path.exists():
        return {}
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise StackError(
            f"{path} is readable by other users (mode {mode:o})",
            hint=f"chmod 600 {path}",
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StackError(f"{path} is corrupt: {exc}", hint="restore it from a backup") from None
    if not isinstance(data, dict):
        raise StackError(
            f"{path} is corrupt: expected a JSON object of names to values, "
            f"found {type(data).__name__}",
            hint="restore it from a backup",
        )
    return {str(k): str(v) for k, v in data.items()}


def _generate(name: str) -> str:
    if name.endswith("_api_key"):
        return new_api_key()
    return secrets.token_urlsafe(32)


def ensure(state_dir: Path, names: set[str]) -> dict[str, str]:
    """Return every named secret, generating (and storing) only the missing ones."""
    state_dir.mkdir(parents=True, exist_ok=True)
    current = load(state_dir)
    missing = sorted(names - current.keys())
    if missing:
        # URL-safe alphabet: the values go into connection URLs and config files unescaped.
        current.update({name: _generate(name) for name in missing})
        _write_private(state_dir / SECRETS_FILE, json.dumps(current, indent=2, sort_keys=True))
    return current


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, text)
