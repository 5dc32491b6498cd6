"""`prefectstack backup`: one consistent set of everything a stack needs to come back, in one
tar file (0600, written atomically): the database (`pg_dump -Fc` in the same snapshot as its
row counts), the auth store (SQLite's online backup), the edge's CA, the secrets, the stack
file and a manifest (versions, checksums, row counts)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import importlib.metadata
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from prefectstack import tools
from prefectstack.errors import StackError
from prefectstack.layout import EDGE_STORAGE, Layout
from prefectstack.runtime import backend, backup_crypt, secret_store, state
from prefectstack.runtime import backup_manifest as mf
from prefectstack.runtime import backup_retention as retention
from prefectstack.runtime.binaries import postgres_bin_dir
from prefectstack.runtime.files import write_atomic
from prefectstack.stack.loader import LoadedStack
from prefectstack.topology import stack_secrets

STATUS_FILE = "backup-status.json"  # the last backup's outcome, for `status`
BACKUPS_DIR = "backups"
EDGE_AUTHORITY = Path(EDGE_STORAGE, "pki", "authorities", "local")
DUMP_TIMEOUT_SECONDS = 6 * 3600


@dataclass(frozen=True)
class Result:
    path: Path
    manifest: mf.Manifest
    size: int
    seconds: float
    pruned: list[str]
    remote: str | None = None  # the S3 copy's URL
    pruned_remote: list[str] = field(default_factory=list)


def destination(loaded: LoadedStack) -> Path:
    configured = loaded.stack.backup.destination
    if configured:
        return (loaded.base_dir / configured).resolve()
    return loaded.state_dir / BACKUPS_DIR


def edge_authority(layout: Layout) -> Path:
    return layout.volume("edge") / EDGE_AUTHORITY


def require_local_postgres(loaded: LoadedStack, verb: str) -> None:
    if loaded.stack.postgres.mode == "external":
        raise StackError(f"`prefectstack {verb}` works on a stack with its own PostgreSQL; "
                         "this one uses an external server",
                         hint="back the external server up with its own tools")
    if backend.read(loaded.state_dir).backend == backend.COMPOSE:
        raise StackError(f"`prefectstack {verb}` works on a stack run by the local backend",
                         hint="the Compose stack backs itself up with its `backup` service")


def create(loaded: LoadedStack, to: Path | None = None) -> Result:
    """Back up the running stack into `to` (default: the stack's backup destination), then
    prune, in the stack's own destination only, its backups beyond `backup.keep`."""
    require_local_postgres(loaded, "backup")
    state_dir = loaded.state_dir
    if not state.supervisor_alive(state_dir):
        raise StackError("the stack is not running; a backup is taken from the running stack",
                         hint="start it with `prefectstack up`")
    dest = to.resolve() if to else destination(loaded)
    started = time.monotonic()
    try:
        try:
            result = _create(loaded, dest, started)
        except Exception as exc:
            full = no_space(exc, dest)
            if full is None:
                raise
            raise full from None
    except BaseException as exc:
        _record_failure(state_dir, str(exc))
        raise
    if loaded.stack.backup.s3 is not None:
        from prefectstack.runtime import backup_s3

        try:
            remote = backup_s3.upload(loaded, result.path)
            result = dataclasses.replace(result, remote=remote,
                                         pruned_remote=backup_s3.prune(loaded))
        except BaseException as exc:
            _record_failure(state_dir, f"{result.path} was written but not copied to S3: "
                                       f"{exc}", path=str(result.path))
            raise
    _record(state_dir, {"ok": True, "at": result.manifest.created_at,
                        "path": str(result.path), "size": result.size,
                        "seconds": round(result.seconds, 2), "remote": result.remote,
                        "schedule": loaded.stack.backup.schedule})
    return result


def no_space(exc: BaseException, dest: Path) -> StackError | None:
    """A full disk, however it was met (our own writes, pg_dump's, the encryption's), as one
    clear error; None for any other failure."""
    text = getattr(exc, "message", None) or str(exc)
    if not ((isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
            or "No space left on device" in text or "Disk quota exceeded" in text):
        return None
    try:
        free = f" ({shutil.disk_usage(dest).free / 1e6:.1f} MB free)"
    except OSError:
        free = ""
    return StackError(f"the backup does not fit in {dest}: no space left on the device{free}; "
                      "its partial files were removed",
                      hint="free some space or back up elsewhere (--to DIR or "
                           "backup.destination); older backups there are untouched")


def _record_failure(state_dir: Path, error: str, **extra: str) -> None:
    with contextlib.suppress(OSError):
        _record(state_dir, {"ok": False, "at": _now().isoformat(), "error": error} | extra)


def _create(loaded: LoadedStack, dest: Path, started: float) -> Result:
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout = Layout(loaded.state_dir)
    secrets = secret_store.load(layout.root)
    when = _now()
    encryption = loaded.stack.backup.encrypt
    name = mf.backup_name(loaded.stack.name, when, {p.name for p in dest.iterdir()},
                          encrypted=encryption is not None)
    work = Path(tempfile.mkdtemp(dir=dest, prefix=".backup-"))
    partial = dest / f".{name}.partial"
    plain = dest / f".{name}.tar-partial"  # the tar before it is encrypted
    try:
        counts, pg_version, alembic = asyncio.run(_dump_database(loaded, secrets, work / mf.DUMP))
        auth_counts = _copy_auth_store(layout, work / mf.AUTH_DB)
        authority = edge_authority(layout)
        if authority.is_dir():
            shutil.copytree(authority, work / mf.EDGE_CA_DIR)
        shutil.copyfile(layout.secrets_file, work / mf.SECRETS)
        source = Path(loaded.source)
        if source.is_file():
            shutil.copyfile(source, work / mf.STACK_FILE)
        for path in work.rglob("*"):
            path.chmod(0o700 if path.is_dir() else 0o600)
        manifest = mf.Manifest(
            stack=loaded.stack.name, created_at=when.isoformat(),
            prefectstack_version=_version("prefectstack"), prefect_version=_version("prefect"),
            postgres_version=pg_version, alembic_version=alembic,
            files=mf.describe_files(work), row_counts=counts, auth_counts=auth_counts)
        write_atomic(work / mf.MANIFEST, manifest.to_json())
        if encryption is None:
            _write_tar(work, partial)
        else:
            _write_tar(work, plain)
            shutil.rmtree(work)  # the space it holds, before the encrypted copy takes more
            backup_crypt.encrypt(plain, partial, encryption.recipients)
            plain.unlink()
        os.replace(partial, dest / name)
        _fsync_dir(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        partial.unlink(missing_ok=True)
        plain.unlink(missing_ok=True)
    pruned = prune(dest, loaded) if dest == destination(loaded) else []
    return Result(dest / name, manifest, (dest / name).stat().st_size,
                  time.monotonic() - started, pruned)


async def _dump_database(
    loaded: LoadedStack, secrets: dict[str, str], out: Path
) -> tuple[dict[str, int], str, str]:
    """Row counts, versions and the dump, all of one snapshot: the counts in the manifest
    are exactly what the dump holds, while the stack keeps writing."""
    pg = loaded.stack.postgres
    password = secrets[stack_secrets.POSTGRES_SUPERUSER_PASSWORD]
    conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="postgres",
                                 password=password, database=pg.database)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            version = str(await conn.fetchval("SHOW server_version")).split()[0]
            alembic = await conn.fetchval("SELECT version_num FROM alembic_version")
            counts = await table_counts(conn)
            env = {"PGPASSWORD": password, "PATH": os.environ.get("PATH", "")}
            await asyncio.to_thread(
                tools.run,
                [str(postgres_bin_dir(pg.mode) / "pg_dump"), "-Fc", "-h", "127.0.0.1",
                 "-p", str(pg.port), "-U", "postgres", f"--snapshot={snapshot}",
                 "-f", str(out), pg.database],
                env=env, timeout=DUMP_TIMEOUT_SECONDS)
    finally:
        await conn.close()
    return counts, version, str(alembic)


async def table_counts(conn: Any) -> dict[str, int]:
    tables = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    counts: dict[str, int] = {}
    for row in tables:
        name = row["tablename"]
        quoted = '"' + name.replace('"', '""') + '"'
        counts[name] = int(await conn.fetchval(f"SELECT count(*) FROM public.{quoted}"))
    return counts


def _copy_auth_store(layout: Layout, out: Path) -> dict[str, int]:
    """SQLite's online backup: a consistent copy while the auth service writes (a file copy
    could catch a half-applied WAL)."""
    db = layout.auth_dir / "auth.db"
    if not db.exists():
        raise StackError(f"the auth store {db} does not exist",
                         hint="is the edge enabled and the stack started once?")
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)
        return {table: int(dst.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in ("users", "api_keys")}
    finally:
        dst.close()
        src.close()


def _write_tar(work: Path, out: Path) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(work / mf.MANIFEST, arcname=mf.MANIFEST)  # first: `list` reads only it
            for path in sorted(work.rglob("*")):
                if path.is_file() and path.name != mf.MANIFEST:
                    tar.add(path, arcname=path.relative_to(work).as_posix())
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _record(state_dir: Path, data: dict[str, Any]) -> None:
    write_atomic(state_dir / STATUS_FILE, json.dumps(data, indent=2), 0o600)


def last_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def overdue(last: dict[str, Any], now: datetime, grace_seconds: float = 3600) -> bool:
    """The last backup is older than its schedule allows: a scheduled time has passed since
    it was made (plus a grace for the backup itself to run)."""
    from cronsim import CronSim, CronSimError

    try:
        made = datetime.fromisoformat(str(last["at"]))
        due = next(CronSim(str(last["schedule"]), made))
    except (KeyError, ValueError, CronSimError, StopIteration):
        return False
    return (now - due).total_seconds() > grace_seconds


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- listing and pruning -----------------------------------------------------------------------


def read_manifest(path: Path) -> mf.Manifest:
    """The manifest of a backup file (its first member), without reading the rest."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            member = tar.next()
            if member is None or member.name != mf.MANIFEST:
                raise StackError(f"{path}: not a prefectstack backup (no manifest first)")
            fh = tar.extractfile(member)
            assert fh is not None
            return mf.Manifest.from_json(fh.read().decode(), str(path))
    except (tarfile.TarError, EOFError, UnicodeDecodeError) as exc:
        raise StackError(f"{path}: the backup file is damaged ({exc})",
                         hint="it may be truncated; use another backup") from None


def listing(dest: Path, stack: str) -> list[dict[str, Any]]:
    """This stack's backups in `dest`, newest first."""
    if not dest.is_dir():
        return []
    now = _now()
    out = []
    for path in dest.iterdir():
        match = mf.NAME_PATTERN.match(path.name)
        if not match or match.group("stack") != stack or not path.is_file():
            continue
        made = mf.made_at(path.name)
        assert made is not None
        entry: dict[str, Any] = {
            "file": str(path), "location": "local", "created_at": made.isoformat(),
            "age_seconds": int((now - made).total_seconds()), "size_bytes": path.stat().st_size,
            "encrypted": bool(match.group("age")),
        }
        if entry["encrypted"]:  # its manifest is read (and checked) when it is restored
            valid = _has_age_header(path)
            entry |= {"valid": valid} | ({} if valid else {"error": "not an age file"})
            out.append(entry)
            continue
        try:
            manifest = read_manifest(path)
            entry |= {"valid": True, "prefect_version": manifest.prefect_version,
                      "postgres_version": manifest.postgres_version,
                      "flow_runs": manifest.row_counts.get("flow_run")}
        except StackError as exc:
            entry |= {"valid": False, "error": exc.message}
        out.append(entry)
    return sorted(out, key=lambda e: e["created_at"], reverse=True)


def _has_age_header(path: Path) -> bool:
    try:
        return backup_crypt.is_encrypted(path)
    except OSError:
        return False


def prune(dest: Path, loaded: LoadedStack) -> list[str]:
    """Delete this stack's backups in `dest` beyond the policy; only files named as
    prefectstack names them are considered."""
    stack = loaded.stack.name
    ours = [(p.name, made) for p in dest.iterdir()
            if (m := mf.NAME_PATTERN.match(p.name)) and m.group("stack") == stack
            and (made := mf.made_at(p.name)) is not None]
    doomed = retention.to_prune(ours, loaded.stack.backup.keep)
    for name in doomed:
        (dest / name).unlink(missing_ok=True)
    return doomed


def known_revisions() -> tuple[set[str], str]:
    """The alembic revisions of the installed Prefect's PostgreSQL migrations, and the
    newest (read from its migration files, which are named by date)."""
    import importlib.util

    spec = importlib.util.find_spec("prefect")  # found, not imported: that takes seconds
    if spec is None or spec.origin is None:
        raise StackError("Prefect is not installed")
    versions = Path(spec.origin).parent / "server/database/_migrations/versions/postgresql"
    found: list[tuple[str, str]] = []
    for path in sorted(versions.glob("*.py")):
        match = re.search(r'^revision\s*=\s*"([0-9a-f]+)"', path.read_text(), re.M)
        if match:
            found.append((path.name, match.group(1)))
    if not found:
        raise StackError(f"no Prefect migrations found in {versions}")
    return {rev for _name, rev in found}, found[-1][1]
