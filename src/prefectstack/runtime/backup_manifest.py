"""What a backup holds and whether it can be restored here: its manifest, checked before
anything is touched. Pure, but for hashing the files it is given."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefectstack.errors import StackError

FORMAT = 1
MANIFEST = "manifest.json"
# The members of a backup, besides the manifest.
DUMP = "postgres.dump"
AUTH_DB = "auth.db"
SECRETS = "secrets.json"
STACK_FILE = "stack.yaml"
EDGE_CA_DIR = "edge-ca"  # Caddy's local authority: root and intermediate, keys and certs
# `<stack>-backup-<UTC time>.tar` (`.tar.age` encrypted): retention prunes only names of
# this shape.
NAME_PATTERN = re.compile(r"^(?P<stack>[a-z][a-z0-9-]{0,39})-backup-(?P<stamp>\d{8}T\d{6}Z)"
                          r"(?:-(?P<n>\d+))?\.tar(?P<age>\.age)?$")
STAMP = "%Y%m%dT%H%M%SZ"


@dataclass
class Manifest:
    stack: str
    created_at: str  # ISO 8601, UTC
    prefectstack_version: str
    prefect_version: str
    postgres_version: str  # the server's, e.g. "18.1"
    alembic_version: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> sha256, size
    row_counts: dict[str, int] = field(default_factory=dict)  # Prefect table -> rows
    auth_counts: dict[str, int] = field(default_factory=dict)  # users, api_keys
    format: int = FORMAT

    @property
    def postgres_major(self) -> int:
        return major(self.postgres_version)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> Manifest:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            if data.get("format") != FORMAT:
                raise StackError(
                    f"{source}: backup format {data.get('format')!r} is not one this "
                    f"prefectstack reads (format {FORMAT})",
                    hint="restore it with the prefectstack version that made it")
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise StackError(f"{source}: the backup's manifest is unreadable ({exc})",
                             hint="the file is damaged or not a prefectstack backup") from None


def major(version: str) -> int:
    match = re.match(r"(\d+)", version)
    if not match:
        raise StackError(f"not a PostgreSQL version: {version!r}")
    return int(match.group(1))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(root: Path) -> dict[str, dict[str, Any]]:
    """Every file under `root` (relative POSIX name -> sha256 and size)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        out[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return out


def verify_files(manifest: Manifest, root: Path, source: str) -> None:
    """Every file the manifest lists is under `root` with its checksum, and nothing else."""
    found = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    found.discard(MANIFEST)
    missing = sorted(manifest.files.keys() - found)
    extra = sorted(found - manifest.files.keys())
    if missing or extra:
        raise StackError(
            f"{source}: the backup does not hold what its manifest lists"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not listed: {', '.join(extra)}" if extra else ""),
            hint="the file is damaged or was altered; use another backup")
    for name, info in sorted(manifest.files.items()):
        if sha256_file(root / name) != info.get("sha256"):
            raise StackError(f"{source}: checksum mismatch for {name}",
                             hint="the file is damaged or was altered; use another backup")
    for required in (DUMP, AUTH_DB, SECRETS):
        if required not in manifest.files:
            raise StackError(f"{source}: the backup has no {required}",
                             hint="not a complete prefectstack backup")


def check_restorable(manifest: Manifest, *, known_revisions: set[str], head_revision: str,
                     postgres_major: int, stack: str, source: str) -> None:
    """Refuse what this installation can't restore: a schema from a newer Prefect, a dump
    from a newer PostgreSQL than the one here (pg_restore reads older dumps, not newer)."""
    if manifest.alembic_version not in known_revisions:
        raise StackError(
            f"{source}: the backup's database schema (migration {manifest.alembic_version}, "
            f"Prefect {manifest.prefect_version}) is newer than the installed Prefect knows "
            f"(its newest migration is {head_revision})",
            hint=f"install prefect=={manifest.prefect_version} (or newer), then restore")
    if manifest.postgres_major > postgres_major:
        raise StackError(
            f"{source}: the backup comes from PostgreSQL {manifest.postgres_version}, newer "
            f"than this stack's PostgreSQL {postgres_major}",
            hint="restore with a stack whose PostgreSQL is at least as new")
    if manifest.stack != stack:
        raise StackError(
            f"{source}: the backup is of the stack `{manifest.stack}`, not `{stack}`",
            hint="restore it with that stack's file (-f), or rename the stack")


def backup_name(stack: str, when: datetime, taken: set[str], encrypted: bool = False) -> str:
    """A name no backup in `taken` has, encrypted or not."""
    base = f"{stack}-backup-{when.astimezone(UTC).strftime(STAMP)}"
    suffix = ".tar.age" if encrypted else ".tar"
    stem, n = base, 1
    while f"{stem}.tar" in taken or f"{stem}.tar.age" in taken:
        n += 1
        stem = f"{base}-{n}"
    return stem + suffix


def made_at(name: str) -> datetime | None:
    """When a backup named by `backup_name` was made; None for any other file."""
    match = NAME_PATTERN.match(name)
    if not match:
        return None
    return datetime.strptime(match.group("stamp"), STAMP).replace(tzinfo=UTC)
