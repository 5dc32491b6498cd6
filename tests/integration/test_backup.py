"""Backups and restore against a real stack (one for the module; the tests share it in file
order): a restore drill through the edge, and damaged backups that must be refused without
touching the data.

The drill: seed 200 runs with logs and artifacts, a variable, a user, API keys (one
revoked); back up while the stack runs; `down --volumes`; restore; `up`. Every Prefect
table's row count was checked by the restore against the manifest; here the stable ones are
checked again after `up`, the key made before the backup authenticates through the edge and
the revoked one is refused.
The backup the drill restores is encrypted (backup.encrypt) and fetched from an S3 bucket
(backup.s3: moto's S3 server on 127.0.0.1), so one restore proves both.

A backup onto a full disk (a small tmpfs; root only) fails with one clear error, leaves no
partial file and the older backup there untouched, and `status` shows the failure.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import cli, free_port, log_problems, stack_yaml

# A stack start takes a minute on a quiet machine and several on a loaded one; the
# default 600 s covers the fixture's start and each test together.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

RUNS = 200  # the drill: 200 runs with logs and an artifact each
LOGS_PER_RUN = 5
# Tables nothing writes to on its own right after a start (the scheduler adds runs of the
# examples' schedules, the event persister events; those are checked by the restore itself).
STABLE_TABLES = ("flow", "deployment", "variable", "work_pool", "block_document",
                 "concurrency_limit_v2", "deployment_schedule")


class Drill:
    def __init__(self, root: Path, s3_endpoint: str) -> None:
        self.root = root
        self.s3_endpoint = s3_endpoint
        self.ports: dict[str, int] = json.loads((root / "ports.json").read_text())
        self.base = f"https://localhost:{self.ports['https']}"
        self.state = root / "state"
        self.keys: dict[str, str] = {}
        self.figures: dict[str, Any] = {}

    def client(self, key: str) -> httpx.Client:
        ca = ssl.create_default_context(cafile=str(self.state / "ca.crt"))
        return httpx.Client(base_url=self.base, verify=ca, timeout=60,
                            headers={"Authorization": f"Bearer {key}"})

    def new_key(self, name: str, role: str) -> str:
        out = cli("keys", "create", name, "--role", role, cwd=self.root).stdout
        return out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    root = tmp_path_factory.mktemp("backup")
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker", "https", "http", "auth")}
    (root / "stack.yaml").write_text(stack_yaml(**ports).replace("interval_seconds: 3600",
                                                                  "interval_seconds: 86400"))
    (root / "ports.json").write_text(json.dumps(ports))
    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    try:
        cli("up", "--detach", cwd=root)
        yield Drill(root, f"http://{host}:{port}")
    finally:
        cli("down", cwd=root, check=False, timeout=120)
        s3.stop()


def seed(drill: Drill) -> None:
    drill.keys["developer"] = drill.new_key("drill-dev", "developer")
    drill.keys["viewer"] = drill.new_key("drill-viewer", "viewer")
    drill.keys["revoked"] = drill.new_key("drill-revoked", "viewer")
    cli("keys", "revoke", drill.keys["revoked"][:12], cwd=drill.root)
    cli("users", "add", "alice", "--role", "operator", "--password-stdin", cwd=drill.root,
        input_text="alice-password-123\n")
    with drill.client(drill.keys["developer"]) as api:
        flow = api.post("/api/flows/", json={"name": "drill"}).raise_for_status().json()
        now = datetime.now(UTC)
        logs = []
        for i in range(RUNS):
            run = api.post("/api/flow_runs/", json={
                "flow_id": flow["id"], "name": f"drill-{i}",
                "state": {"type": "COMPLETED", "name": "Completed"},
            }).raise_for_status().json()
            api.post("/api/artifacts/", json={
                "key": f"drill-{i}", "type": "markdown", "data": f"# run {i}",
                "flow_run_id": run["id"]}).raise_for_status()
            logs += [{"name": "drill", "level": 20, "message": f"run {i} line {n}",
                      "timestamp": (now - timedelta(seconds=n)).isoformat(),
                      "flow_run_id": run["id"]} for n in range(LOGS_PER_RUN)]
        api.post("/api/logs/", json=logs).raise_for_status()
        api.post("/api/variables/", json={"name": "region", "value": "eu-west-1"}
                 ).raise_for_status()


def counts(drill: Drill) -> dict[str, Any]:
    with drill.client(drill.keys["viewer"]) as api:
        flows = api.post("/api/flows/filter", json={}).raise_for_status().json()
        drill_flow = next(f for f in flows if f["name"] == "drill")
        runs = api.post("/api/flow_runs/count", json={"flows": {"id": {"any_": [
            drill_flow["id"]]}}}).raise_for_status().json()
        deployments = sorted(d["id"] for d in api.post(
            "/api/deployments/filter", json={}).raise_for_status().json())
        variable = api.get("/api/variables/name/region").raise_for_status().json()["value"]
    return {"runs": runs, "deployments": deployments, "variable": variable}


def backups(drill: Drill) -> list[dict[str, Any]]:
    out = json.loads(cli("backup", "list", "--json", cwd=drill.root).stdout)
    listed: list[dict[str, Any]] = out["backups"]
    return listed


def test_backup_of_the_running_stack(drill: Drill) -> None:
    seed(drill)
    drill.figures["before"] = counts(drill)
    assert drill.figures["before"]["runs"] == RUNS
    start = time.monotonic()
    result = json.loads(cli("backup", "--json", cwd=drill.root).stdout)
    drill.figures["backup_seconds"] = time.monotonic() - start
    path = Path(result["file"])
    assert path.parent == drill.state / "backups"
    assert path.stat().st_mode & 0o777 == 0o600
    manifest = result["manifest"]
    assert manifest["row_counts"]["flow_run"] >= RUNS
    assert manifest["row_counts"]["log"] >= RUNS * LOGS_PER_RUN
    assert manifest["row_counts"]["artifact"] >= RUNS
    assert manifest["auth_counts"]["users"] >= 2  # admin and alice
    assert manifest["postgres_version"][:2].isdigit()
    assert manifest["prefect_version"] and manifest["alembic_version"]
    assert {"postgres.dump", "auth.db", "secrets.json", "stack.yaml",
            "edge-ca/root.crt", "edge-ca/root.key"} <= manifest["files"].keys()
    with tarfile.open(path) as tar:
        assert tar.getnames()[0] == "manifest.json"
        assert all(m.mode & 0o077 == 0 for m in tar.getmembers())
    drill.figures["backup_bytes"] = path.stat().st_size
    drill.figures["manifest"] = manifest
    drill.figures["archive"] = path
    listed = backups(drill)
    assert [b["file"] for b in listed] == [str(path)]
    assert listed[0]["valid"] and listed[0]["size_bytes"] == path.stat().st_size
    status = cli("status", cwd=drill.root, check=False)
    assert "last backup:" in status.stdout
    # A running stack is never restored over.
    refused = cli("restore", str(path), "--yes", cwd=drill.root, check=False)
    assert refused.returncode == 1 and "must be stopped first" in refused.stderr
    assert "Traceback" not in refused.stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_backup_onto_a_full_disk_fails_cleanly(drill: Drill, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the backup destination needs root")
    older: Path = drill.figures["archive"]
    disk = tmp_path / "small-disk"
    disk.mkdir()
    # Room for the older backup and half of another: the new one (its work files and then
    # the archive, each about as large) cannot fit.
    pages = older.stat().st_size * 3 // 2 // 4096 + 1
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * 4096},mode=0700",
                              "tmpfs", str(disk)], capture_output=True, text=True, timeout=60)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        shutil.copyfile(older, disk / older.name)
        before = sha256(disk / older.name)
        result = cli("backup", "--to", str(disk), cwd=drill.root, check=False)
        assert result.returncode == 1
        lines = result.stderr.splitlines()
        errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        error = lines[errors[0]]
        assert error.startswith("error: the backup does not fit in"), result.stderr
        assert "no space left on the device" in error
        assert lines[errors[0] + 1].strip().startswith("hint: free some space")
        assert "Traceback" not in result.stderr + result.stdout
        assert sorted(os.listdir(disk)) == [older.name]  # no partial file, no work dir
        assert sha256(disk / older.name) == before
    finally:
        subprocess.run(["umount", str(disk)], check=False, timeout=60)
    status = json.loads((drill.state / "backup-status.json").read_text())
    assert status["ok"] is False and "does not fit" in status["error"]
    shown = cli("status", cwd=drill.root, check=False)
    assert "last backup FAILED" in shown.stdout, shown.stdout


def configure_encryption_and_s3(drill: Drill) -> str:
    """Add backup.encrypt (a key from `backup keygen`) and backup.s3 (credentials in 0600
    files) to the stack file; return the public key."""
    out = cli("backup", "keygen", "backup.key", cwd=drill.root).stdout
    public = out.split("recipients): ")[1].split()[0]
    for name, value in (("s3-key-id", "testing"), ("s3-secret", "testing")):
        (drill.root / name).write_text(value + "\n")
        (drill.root / name).chmod(0o600)
    with (drill.root / "stack.yaml").open("a") as fh:
        fh.write(f"""
backup:
  encrypt:
    recipients: [{public}]
    identity_file: backup.key
  s3:
    bucket: itest-backups
    prefix: site/
    endpoint_url: {drill.s3_endpoint}
    region: us-east-1
    access_key_id_file: s3-key-id
    secret_access_key_file: s3-secret
""")
    import boto3

    boto3.client("s3", endpoint_url=drill.s3_endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing",
                 ).create_bucket(Bucket="itest-backups")
    return public


def test_an_encrypted_backup_copied_to_s3(drill: Drill) -> None:
    configure_encryption_and_s3(drill)
    # The plain backup of the same day is pruned by this one (backup.keep keeps the newest
    # of each day); the damaged-backup tests below work on a copy of it.
    plain: Path = drill.figures["archive"]
    drill.figures["archive"] = shutil.copy2(plain, drill.root / plain.name)
    start = time.monotonic()
    result = json.loads(cli("backup", "--json", cwd=drill.root).stdout)
    drill.figures["encrypted_total_seconds"] = time.monotonic() - start
    drill.figures["encrypted_seconds"] = result["seconds"]
    sealed = Path(result["file"])
    assert result["encrypted"] and sealed.name.endswith(".tar.age")
    assert sealed.stat().st_mode & 0o777 == 0o600
    assert sealed.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert not tarfile.is_tarfile(sealed)
    assert result["remote"] == f"s3://itest-backups/site/{sealed.name}"
    assert result["pruned"] == [plain.name] and not plain.exists()
    drill.figures["remote"] = result["remote"]
    drill.figures["manifest"] = result["manifest"]
    drill.figures["encrypted_bytes"] = sealed.stat().st_size
    drill.figures["sealed"] = sealed
    if shutil.which("age"):  # the standard CLI reads it
        opened = subprocess.run(["age", "-d", "-i", str(drill.root / "backup.key"),
                                 str(sealed)], capture_output=True, check=True,
                                timeout=120).stdout
        with tarfile.open(fileobj=io.BytesIO(opened)) as tar:
            assert tar.getnames()[0] == "manifest.json"
    listed = backups(drill)
    where = {(b["location"], Path(b["file"]).name) for b in listed}
    assert where == {("local", sealed.name), ("s3", sealed.name)}
    remote = next(b for b in listed if b["location"] == "s3")
    assert remote["size_bytes"] == sealed.stat().st_size and remote["encrypted"]
    shown = cli("backup", "list", cwd=drill.root).stdout
    assert result["remote"] in shown and "encrypted (age)" in shown
    assert "last backup:" in cli("status", cwd=drill.root, check=False).stdout


def test_restore_drill(drill: Drill) -> None:
    archive: str = drill.figures["remote"]  # encrypted, fetched from the bucket
    cli("down", "--volumes", "--yes", cwd=drill.root, timeout=180)
    assert not (drill.state / "data").exists()
    (drill.state / "secrets.json").unlink()  # a new machine: nothing but the backup
    start = time.monotonic()
    out = json.loads(cli("restore", archive, "--yes", "--json", cwd=drill.root,
                         timeout=600).stdout)
    drill.figures["restore_seconds"] = time.monotonic() - start
    assert out["manifest"]["row_counts"] == drill.figures["manifest"]["row_counts"]
    assert (drill.state / "secrets.json").stat().st_mode & 0o777 == 0o600
    cli("up", "--detach", cwd=drill.root)
    after = counts(drill)
    assert after == drill.figures["before"]
    with drill.client(drill.keys["revoked"]) as api:
        assert api.post("/api/flows/filter", json={}).status_code == 401
    with drill.client(drill.keys["developer"]) as api:
        runs = api.post("/api/flow_runs/filter", json={"limit": 1, "flow_runs": {
            "name": {"any_": ["drill-7"]}}}).raise_for_status().json()
        logs = api.post("/api/logs/filter", json={"logs": {"flow_run_id": {"any_": [
            runs[0]["id"]]}}}).raise_for_status().json()
        assert sorted(log["message"] for log in logs) == [
            f"run 7 line {n}" for n in range(LOGS_PER_RUN)]
    users = json.loads(cli("users", "list", "--json", cwd=drill.root).stdout)
    assert "alice" in {u["username"] for u in users}
    assert table_counts(drill, STABLE_TABLES) == {
        t: drill.figures["manifest"]["row_counts"][t] for t in STABLE_TABLES}
    print(f"\nFIGURES: {RUNS} runs x {LOGS_PER_RUN} logs: backup "
          f"{drill.figures['backup_seconds']:.1f}s, {drill.figures['backup_bytes'] / 1e6:.2f} MB;"
          f" encrypted backup {drill.figures['encrypted_seconds']:.1f}s "
          f"({drill.figures['encrypted_bytes'] / 1e6:.2f} MB), with the S3 upload "
          f"{drill.figures['encrypted_total_seconds']:.1f}s (CLI);"
          f" restore from S3, decrypted, {drill.figures['restore_seconds']:.1f}s")
    # The supervisor's readiness probe connects while the restored cluster starts (slowly,
    # on a loaded machine): PostgreSQL answers it with this FATAL line.
    starting = ("postgres", r"FATAL:  the database system is starting up")
    assert log_problems(drill.state / "logs", allowed=(starting,)) == []


def table_counts(drill: Drill, tables: tuple[str, ...]) -> dict[str, int]:
    import asyncio

    import asyncpg

    secrets = json.loads((drill.state / "secrets.json").read_text())

    async def count() -> dict[str, int]:
        conn = await asyncpg.connect(host="127.0.0.1", port=drill.ports["pg"], user="postgres",
                                     password=secrets["postgres_superuser_password"],
                                     database="prefect")
        try:
            return {t: int(await conn.fetchval(f'SELECT count(*) FROM "{t}"')) for t in tables}
        finally:
            await conn.close()

    return asyncio.run(count())


# -- damaged backups ----------------------------------------------------------------------------


def fingerprint(state: Path) -> dict[str, str]:
    """What a failed restore must not change: every file of the data dir and the secrets."""
    out = {}
    for path in sorted([state / "secrets.json", *(state / "data").rglob("*")]):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(state))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def rewrite(src: Path, dst: Path, change: dict[str, bytes]) -> None:
    """A copy of the backup with some members' contents replaced."""
    with tarfile.open(src) as tar_in, tarfile.open(dst, "w") as tar_out:
        for member in tar_in.getmembers():
            fh = tar_in.extractfile(member)
            assert fh is not None
            data = change.get(member.name, fh.read())
            member.size = len(data)
            tar_out.addfile(member, io.BytesIO(data))


def truncated(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) * 2 // 3])


def wrong_checksum(src: Path, dst: Path) -> None:
    with tarfile.open(src) as tar:
        fh = tar.extractfile("secrets.json")
        assert fh is not None
        secrets = json.loads(fh.read())
    secrets["admin_password"] = "tampered"
    rewrite(src, dst, {"secrets.json": json.dumps(secrets).encode()})


def newer_schema(src: Path, dst: Path) -> None:
    with tarfile.open(src) as tar:
        fh = tar.extractfile("manifest.json")
        assert fh is not None
        manifest = json.loads(fh.read())
    manifest["alembic_version"] = "ffffffffffff"
    manifest["prefect_version"] = "9.0.0"
    rewrite(src, dst, {"manifest.json": json.dumps(manifest).encode()})


def not_a_backup(src: Path, dst: Path) -> None:
    dst.write_bytes(os.urandom(4096))


DAMAGE = {
    "truncated": (truncated, "damaged"),
    "wrong-checksum": (wrong_checksum, "checksum mismatch for secrets.json"),
    "newer-schema": (newer_schema, "newer than the installed Prefect knows"),
    "not-a-backup": (not_a_backup, "damaged"),
}


def test_an_encrypted_backup_without_its_key_is_refused(drill: Drill) -> None:
    cli("down", cwd=drill.root, timeout=180)
    sealed: Path = drill.figures["sealed"]
    stack_file = drill.root / "stack.yaml"
    configured = stack_file.read_text()
    cli("backup", "keygen", "other.key", cwd=drill.root)
    cases = {"identity_file: other.key": "cannot decrypt it with the key in",
             "identity_file: null": "no key to decrypt it is configured"}
    try:
        for setting, message in cases.items():
            stack_file.write_text(configured.replace("identity_file: backup.key", setting))
            before = fingerprint(drill.state)
            result = cli("restore", str(sealed), "--yes", cwd=drill.root, check=False)
            assert result.returncode == 1 and message in result.stderr, result.stderr
            assert "Traceback" not in result.stderr + result.stdout
            assert fingerprint(drill.state) == before
            assert not list(drill.state.glob(".restore-*"))
    finally:
        stack_file.write_text(configured)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_backup_is_refused_and_nothing_changes(drill: Drill, case: str) -> None:
    cli("down", cwd=drill.root, timeout=180)
    damage, message = DAMAGE[case]
    bad = drill.root / f"{case}.tar"
    damage(drill.figures["archive"], bad)
    before = fingerprint(drill.state)
    result = cli("restore", str(bad), "--yes", cwd=drill.root, check=False, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert fingerprint(drill.state) == before
    assert not list(drill.state.glob(".restore-*"))
    assert not list((drill.state / "data").glob("*.restoring*"))
