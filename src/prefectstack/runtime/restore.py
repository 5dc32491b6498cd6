"""`prefectstack restore FILE`: check the backup whole (checksums, versions) before touching
anything, rebuild the database in a fresh data dir beside the old one (and check its row
counts against the manifest), then swap the new data in. Any failure before the swap leaves
the old data as it was; a failure during it puts the old data back."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import socket
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from prefectstack import tools
from prefectstack.errors import StackError
from prefectstack.jobs import dbinit
from prefectstack.layout import Layout
from prefectstack.runtime import backup, backup_crypt, pgdata, state
from prefectstack.runtime import backup_manifest as mf
from prefectstack.runtime.binaries import postgres_bin_dir
from prefectstack.runtime.files import write_atomic
from prefectstack.runtime.unprivileged import reachable_postgres
from prefectstack.stack.loader import LoadedStack
from prefectstack.topology import stack_secrets

PREVIOUS_DIR = "restore-previous"  # the data a restore replaced, kept until the next one
NEW_SUFFIX = ".restoring"
PG_START_TIMEOUT_SECONDS = 300
RESTORE_TIMEOUT_SECONDS = 6 * 3600


@dataclass
class Report:
    archive: str  # a path, or an s3:// URL
    manifest: mf.Manifest
    previous: Path | None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def restore(loaded: LoadedStack, archive: str) -> Report:
    """Restore `archive`: a backup file (a tar, or a tar encrypted with age, decrypted with
    backup.encrypt.identity_file) or an `s3://BUCKET/KEY` copy (fetched with backup.s3)."""
    backup.require_local_postgres(loaded, "restore")
    state_dir = loaded.state_dir
    if state.supervisor_alive(state_dir) or state.read(state_dir) is not None:
        raise StackError("the stack is running (or left state behind); restore replaces its "
                         "data, so it must be stopped first",
                         hint="`prefectstack down`, then restore")
    from_s3 = archive.startswith(backup_s3_scheme())
    if not from_s3 and not Path(archive).is_file():
        raise StackError(f"no backup file at {archive}")
    started = time.monotonic()
    layout = Layout(state_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.data.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=layout.root, prefix=".restore-"))
    fetched = Path(tempfile.mkdtemp(dir=layout.root, prefix=".restore-fetch-"))
    new_pgdata = layout.data / f"pgdata{NEW_SUFFIX}"
    new_auth = layout.data / f"auth{NEW_SUFFIX}"
    try:
        tar = _fetch_and_decrypt(loaded, archive, fetched)
        manifest = _unpack_and_check(loaded, tar, work, archive)
        shutil.rmtree(fetched)  # the space it takes, before the database is rebuilt
        secrets = mf_secrets(work)
        _rebuild_database(loaded, layout, manifest, secrets, work, new_pgdata)
        _rebuild_auth(layout, work, new_auth)
        report = Report(archive, manifest, None)
        report.previous = _swap(layout, work, new_pgdata, new_auth, loaded)
        _compare_stack_file(loaded, work, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(fetched, ignore_errors=True)
        for leftover in (new_pgdata, new_auth, new_pgdata.with_name(new_pgdata.name
                                                                    + ".initdb-tmp")):
            shutil.rmtree(leftover, ignore_errors=True)
        (layout.root / f".secrets{NEW_SUFFIX}").unlink(missing_ok=True)
    report.seconds = time.monotonic() - started
    return report


def backup_s3_scheme() -> str:
    return "s3://"


def _fetch_and_decrypt(loaded: LoadedStack, archive: str, fetched: Path) -> Path:
    """The backup as a plain tar on local disk: fetched from S3, decrypted with the stack's
    age key when it is encrypted (either into the private dir `fetched`)."""
    local = Path(archive)
    if archive.startswith(backup_s3_scheme()):
        from prefectstack.runtime import backup_s3

        local = fetched / "download"
        backup_s3.download(loaded, archive, local)
    try:
        encrypted = backup_crypt.is_encrypted(local)
    except OSError as exc:
        raise StackError(f"cannot read {archive} ({exc.strerror})") from None
    if not encrypted:
        return local
    plain = fetched / "decrypted.tar"
    backup_crypt.decrypt(local, plain, backup_crypt.identity_file(loaded))
    if local.parent == fetched:
        local.unlink()
    return plain


def _unpack_and_check(loaded: LoadedStack, archive: Path, work: Path,
                      source: str) -> mf.Manifest:
    try:
        with tarfile.open(archive, mode="r:") as tar:
            tar.extractall(work, filter="data")
    except (tarfile.TarError, EOFError) as exc:
        raise StackError(f"{source}: the backup file is damaged ({exc})",
                         hint="it may be truncated or not a backup; use another one") from None
    if not (work / mf.MANIFEST).is_file():
        raise StackError(f"{source}: not a prefectstack backup (no {mf.MANIFEST})")
    manifest = mf.Manifest.from_json((work / mf.MANIFEST).read_text(), source)
    mf.verify_files(manifest, work, source)
    revisions, head = backup.known_revisions()
    mf.check_restorable(manifest, known_revisions=revisions, head_revision=head,
                        postgres_major=postgres_major(loaded), stack=loaded.stack.name,
                        source=source)
    return manifest


def mf_secrets(work: Path) -> dict[str, str]:
    import json

    data = json.loads((work / mf.SECRETS).read_text())
    if not isinstance(data, dict) or stack_secrets.POSTGRES_SUPERUSER_PASSWORD not in data:
        raise StackError("the backup's secrets.json lacks the database passwords")
    return {str(k): str(v) for k, v in data.items()}


def postgres_major(loaded: LoadedStack) -> int:
    out = tools.run([str(postgres_bin_dir(loaded.stack.postgres.mode) / "postgres"),
                     "--version"]).stdout
    for token in out.split():
        if token[:1].isdigit():
            return mf.major(token)
    raise StackError(f"cannot tell the PostgreSQL version from {out!r}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rebuild_database(loaded: LoadedStack, layout: Layout, manifest: mf.Manifest,
                      secrets: dict[str, str], work: Path, new_pgdata: Path) -> None:
    """initdb a fresh cluster beside the old one, run it on a private port, restore the dump
    into it, and check every table's row count against the manifest."""
    pg = loaded.stack.postgres
    user = pg.os_user if pgdata.is_root() else None
    bin_dir = (reachable_postgres(pg.mode, layout.runtime_dir, pg.os_user) if user
               else postgres_bin_dir(pg.mode))
    shutil.rmtree(new_pgdata, ignore_errors=True)
    superuser = secrets[stack_secrets.POSTGRES_SUPERUSER_PASSWORD]
    pgdata.prepare(new_pgdata, bin_dir, pg.os_user, superuser)
    port = _free_port()
    log = new_pgdata / "restore.log"
    settings = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    tools.run([str(bin_dir / "pg_ctl"), "-D", str(new_pgdata), "-l", str(log), "-o", settings,
               "-w", "-t", str(PG_START_TIMEOUT_SECONDS), "start"],
              user=user, timeout=PG_START_TIMEOUT_SECONDS + 30)
    try:
        admin = f"postgresql://postgres:{superuser}@127.0.0.1:{port}/postgres"
        owner = f"postgresql://{pg.user}:{secrets[stack_secrets.POSTGRES_PASSWORD]}" \
                f"@127.0.0.1:{port}/{pg.database}"
        with contextlib.redirect_stdout(io.StringIO()):  # its progress line is for logs
            asyncio.run(dbinit._create_role_and_db(admin, owner))
        pg_restore = str(postgres_bin_dir(pg.mode) / "pg_restore")
        dump = work / mf.DUMP
        contents = work / "restore.list"
        contents.write_text(without_extensions(tools.run([pg_restore, "-l", str(dump)]).stdout))
        tools.run([pg_restore, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                   "-d", pg.database, "--no-owner", f"--role={pg.user}", "--exit-on-error",
                   "--single-transaction", "-L", str(contents), str(dump)],
                  env={"PGPASSWORD": superuser, "PATH": os.environ.get("PATH", "")},
                  timeout=RESTORE_TIMEOUT_SECONDS)
        asyncio.run(_check_counts(admin.rsplit("/", 1)[0] + f"/{pg.database}", manifest))
    finally:
        with contextlib.suppress(StackError):
            tools.run([str(bin_dir / "pg_ctl"), "-D", str(new_pgdata), "-m", "fast", "-w",
                       "stop"], user=user, timeout=120)
    log.unlink(missing_ok=True)


def without_extensions(listing: str) -> str:
    """pg_restore's table of contents without the extensions (pg_trgm) and their comments:
    db-init created them as the superuser, and the database's owner, whose role the objects
    are restored as, may not comment on them."""
    return "".join(line + "\n" for line in listing.splitlines()
                   if not re.search(r"\b(EXTENSION|COMMENT - EXTENSION)\b", line))


async def _check_counts(url: str, manifest: mf.Manifest) -> None:
    conn = await asyncpg.connect(url)
    try:
        counts = await backup.table_counts(conn)
        alembic = await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    if alembic != manifest.alembic_version:
        raise StackError(f"the restored schema is at migration {alembic}, the backup's at "
                         f"{manifest.alembic_version}")
    differ = sorted(t for t in manifest.row_counts.keys() | counts.keys()
                    if manifest.row_counts.get(t) != counts.get(t))
    if differ:
        detail = ", ".join(f"{t}: {counts.get(t)} != {manifest.row_counts.get(t)}"
                           for t in differ[:10])
        raise StackError(f"the restored database does not match the backup's row counts "
                         f"({detail})", hint="nothing was replaced; the old data is intact")


def _rebuild_auth(layout: Layout, work: Path, new_auth: Path) -> None:
    """The restored auth store, beside whatever else the auth dir holds (the audit log)."""
    shutil.rmtree(new_auth, ignore_errors=True)
    new_auth.mkdir(mode=0o700)
    if layout.auth_dir.is_dir():
        for path in layout.auth_dir.iterdir():
            if not path.name.startswith("auth.db") and path.is_file():
                shutil.copy2(path, new_auth / path.name)
    fd = os.open(new_auth / "auth.db", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, open(work / mf.AUTH_DB, "rb") as src:
        shutil.copyfileobj(src, out)
        out.flush()
        os.fsync(out.fileno())


class _Moves:
    """Renames done so far, undone in reverse if a later one fails."""

    def __init__(self) -> None:
        self.done: list[tuple[Path, Path]] = []

    def move(self, src: Path, dst: Path) -> None:
        if not src.exists():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        self.done.append((src, dst))

    def undo(self) -> None:
        for src, dst in reversed(self.done):
            with contextlib.suppress(OSError):
                if src.exists():
                    shutil.rmtree(src) if src.is_dir() else src.unlink()
                os.replace(dst, src)


def _swap(layout: Layout, work: Path, new_pgdata: Path, new_auth: Path,
          loaded: LoadedStack) -> Path:
    """Each piece is one rename on the same file system; the old pieces go to
    `<state dir>/restore-previous/` (replacing what an earlier restore left there)."""
    previous = layout.root / PREVIOUS_DIR
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir(mode=0o700)
    authority = backup.edge_authority(layout)
    certificates = authority.parents[2] / "certificates" / "local"
    moves = _Moves()
    try:
        moves.move(layout.volume("pgdata"), previous / "pgdata")
        moves.move(new_pgdata, layout.volume("pgdata"))
        moves.move(layout.auth_dir, previous / "auth")
        moves.move(new_auth, layout.auth_dir)
        # The broker's queues refer to the old database: start it empty.
        moves.move(layout.volume("redis"), previous / "redis")
        if (work / mf.EDGE_CA_DIR).is_dir():
            moves.move(authority, previous / "edge-ca")
            # Leaf certificates signed by another CA would still be served: Caddy issues
            # new ones from the restored CA at the next start.
            moves.move(certificates, previous / "edge-certificates")
            moves.move(work / mf.EDGE_CA_DIR, authority)
            _chown_edge(loaded, layout)
        new_secrets = write_atomic(layout.root / f".secrets{NEW_SUFFIX}",
                                   (work / mf.SECRETS).read_text(), 0o600)
        moves.move(layout.secrets_file, previous / layout.secrets_file.name)
        moves.move(new_secrets, layout.secrets_file)
    except BaseException:
        moves.undo()
        raise
    return previous


def _chown_edge(loaded: LoadedStack, layout: Layout) -> None:
    """The restored CA belongs to the account that runs the edge (when root runs the stack);
    a full walk, as the new files sit under directories that account already owns."""
    if not pgdata.is_root():
        return
    uid, gid = pgdata.ids(pgdata.ensure_os_user(loaded.stack.postgres.os_user).pw_name)
    for root, dirs, files in os.walk(layout.volume("edge")):
        os.chown(root, uid, gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def _compare_stack_file(loaded: LoadedStack, work: Path, report: Report) -> None:
    saved = work / mf.STACK_FILE
    current = Path(loaded.source)
    if saved.is_file() and current.is_file() and saved.read_bytes() != current.read_bytes():
        report.notes.append(
            f"the stack file differs from the one backed up; it was left as it is (the "
            f"backed-up copy is `{mf.STACK_FILE}` inside "
            f"{report.archive.rsplit('/', 1)[-1]})")
