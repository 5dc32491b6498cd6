"""Encrypted backups (age, through pyrage; the `age` CLI reads them) and copies in an
S3-compatible bucket, against moto's real S3 HTTP server on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from prefectstack.errors import StackError
from prefectstack.runtime import backup_crypt, backup_s3
from prefectstack.runtime import backup_manifest as mf
from prefectstack.runtime.restore import _fetch_and_decrypt
from prefectstack.stack.loader import LoadedStack, parse_stack


def keypair(tmp_path: Path, name: str = "key.txt") -> tuple[Path, str]:
    path = tmp_path / name
    return path, backup_crypt.keygen(path)


def loaded(tmp_path: Path, backup: str) -> LoadedStack:
    text = "version: 1\nname: prod\nbackup:\n" + backup
    return LoadedStack(parse_stack(text, {}), tmp_path, str(tmp_path / "stack.yaml"))


# -- encryption --------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_once(tmp_path: Path) -> None:
    path, public = keypair(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert public.startswith("age1") and f"# public key: {public}" in path.read_text()
    with pytest.raises(StackError, match="never overwritten"):
        backup_crypt.keygen(path)


def test_encrypt_then_decrypt(tmp_path: Path) -> None:
    key, public = keypair(tmp_path)
    plain = tmp_path / "b.tar"
    plain.write_bytes(b"tar" * 100_000)
    sealed = tmp_path / "b.tar.age"
    backup_crypt.encrypt(plain, sealed, [public])
    assert sealed.stat().st_mode & 0o777 == 0o600
    assert backup_crypt.is_encrypted(sealed) and not backup_crypt.is_encrypted(plain)
    assert b"tartar" not in sealed.read_bytes()
    out = tmp_path / "out.tar"
    backup_crypt.decrypt(sealed, out, key)
    assert out.read_bytes() == plain.read_bytes() and out.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is not installed "
                    "(apt-get install age)")
def test_the_age_cli_decrypts_a_backup(tmp_path: Path) -> None:
    key, public = keypair(tmp_path)
    plain = tmp_path / "b.tar"
    plain.write_bytes(b"payload" * 1000)
    backup_crypt.encrypt(plain, tmp_path / "b.tar.age", [public])
    out = subprocess.run(["age", "-d", "-i", str(key), str(tmp_path / "b.tar.age")],
                         capture_output=True, check=True, timeout=60).stdout
    assert out == plain.read_bytes()


def test_a_wrong_or_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    _key, public = keypair(tmp_path)
    other, _ = keypair(tmp_path, "other.txt")
    plain = tmp_path / "b.tar"
    plain.write_bytes(b"x" * 1000)
    sealed = tmp_path / "b.tar.age"
    backup_crypt.encrypt(plain, sealed, [public])
    out = tmp_path / "out.tar"
    with pytest.raises(StackError, match="cannot decrypt it with the key in") as info:
        backup_crypt.decrypt(sealed, out, other)
    assert "nothing was changed" in (info.value.hint or "")
    assert not out.exists()
    with pytest.raises(StackError, match="no key to decrypt it is configured"):
        backup_crypt.decrypt(sealed, out, None)
    with pytest.raises(StackError, match="does not exist"):
        backup_crypt.decrypt(sealed, out, tmp_path / "nope.txt")
    assert not out.exists()


def test_an_identity_file_others_can_read_or_garbage_is_refused(tmp_path: Path) -> None:
    key, _ = keypair(tmp_path)
    key.chmod(0o644)
    with pytest.raises(StackError, match="readable by others") as info:
        backup_crypt.load_identities(key)
    assert info.value.hint == f"chmod 600 {key}"
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\nAGE-SECRET-KEY-1NOPE\n")
    bad.chmod(0o600)
    with pytest.raises(StackError, match="key 1 is not an age private key"):
        backup_crypt.load_identities(bad)


def test_the_encrypt_section(tmp_path: Path) -> None:
    key, public = keypair(tmp_path)
    stack = loaded(tmp_path, f"  encrypt:\n    recipients: [{public}]\n"
                             f"    identity_file: {key.name}\n")
    assert backup_crypt.identity_file(stack) == key
    assert backup_crypt.identity_file(loaded(tmp_path, "  enabled: true\n")) is None
    for section, fragment in [
        ("  encrypt:\n    recipients: [age1nope]\n", "is not an age public key"),
        ("  encrypt:\n    recipients: []\n", "at least 1 item"),
        (f"  encrypt:\n    recipients: [{public}]\n    identity_file: AGE-SECRET-KEY-1X\n",
         "never put the private key itself in the stack file"),
    ]:
        with pytest.raises(StackError, match=fragment):
            loaded(tmp_path, section)


def test_encrypted_names() -> None:
    when = datetime(2026, 11, 29, 3, 0, 5, tzinfo=UTC)
    name = mf.backup_name("prod", when, set(), encrypted=True)
    assert name == "prod-backup-20261129T030005Z.tar.age"
    assert mf.made_at(name) == when
    # A plain and an encrypted backup of the same second never share a stem.
    assert mf.backup_name("prod", when, {name}) == "prod-backup-20261129T030005Z-2.tar"


def test_restore_reads_plain_and_encrypted_files(tmp_path: Path) -> None:
    key, public = keypair(tmp_path)
    stack = loaded(tmp_path, f"  encrypt:\n    recipients: [{public}]\n"
                             f"    identity_file: {key.name}\n")
    plain = tmp_path / "b.tar"
    plain.write_bytes(b"tar bytes")
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    assert _fetch_and_decrypt(stack, str(plain), fetched) == plain
    backup_crypt.encrypt(plain, tmp_path / "b.tar.age", [public])
    out = _fetch_and_decrypt(stack, str(tmp_path / "b.tar.age"), fetched)
    assert out.parent == fetched and out.read_bytes() == b"tar bytes"


# -- S3 ----------------------------------------------------------------------------------------


def test_s3_urls() -> None:
    assert backup_s3.parse_url("s3://b-1/p/x.tar") == ("b-1", "p/x.tar")
    for bad in ("s3://bucket", "s3://bucket/", "http://x/y", "s3:///key"):
        with pytest.raises(StackError, match="not an S3 object URL"):
            backup_s3.parse_url(bad)


def test_s3_credentials_from_files_or_variables(tmp_path: Path) -> None:
    (tmp_path / "id").write_text("AKID\n")
    secret = tmp_path / "secret"
    secret.write_text("SECRET\n")
    secret.chmod(0o600)
    files = loaded(tmp_path, "  s3:\n    bucket: bkt\n    access_key_id_file: id\n"
                             "    secret_access_key_file: secret\n").stack.backup.s3
    assert files is not None
    assert backup_s3.credentials(files, tmp_path, {}) == ("AKID", "SECRET")
    secret.chmod(0o640)
    with pytest.raises(StackError, match="readable by others"):
        backup_s3.credentials(files, tmp_path, {})
    env = loaded(tmp_path, "  s3:\n    bucket: bkt\n    access_key_id_env: MY_ID\n"
                           "    secret_access_key_env: MY_SECRET\n").stack.backup.s3
    assert env is not None
    assert backup_s3.credentials(env, tmp_path, {"MY_ID": "a", "MY_SECRET": "b"}) == ("a", "b")
    assert backup_s3.credentials(env, tmp_path, {}) == (None, None)  # boto3's own chain
    with pytest.raises(StackError, match="only half of its credentials"):
        backup_s3.credentials(env, tmp_path, {"MY_ID": "a"})


@pytest.mark.parametrize("section,fragment", [
    ("  s3:\n    bucket: My_Bucket\n", "is not a bucket name"),
    ("  s3:\n    bucket: bkt\n    prefix: /abs/\n", "no leading `/`"),
    ("  s3:\n    bucket: bkt\n    endpoint_url: minio:9000\n", "not an http"),
    ("  s3:\n    bucket: bkt\n    secret_access_key_env: 'wJalrXUtnFEMI/K7MDENG'\n",
     "never the secret itself"),
    ("  s3:\n    bucket: bkt\n    secret_access_key: x\n", "secret_access_key"),
])
def test_invalid_s3_sections(tmp_path: Path, section: str, fragment: str) -> None:
    with pytest.raises(StackError, match=fragment):
        loaded(tmp_path, section)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_stack(tmp_path: Path, endpoint: str, bucket: str, keep: str = "") -> LoadedStack:
    (tmp_path / "id").write_text("testing")
    (tmp_path / "secret").write_text("testing")
    (tmp_path / "secret").chmod(0o600)
    stack = loaded(tmp_path, f"{keep}  s3:\n    bucket: {bucket}\n    prefix: site/prod/\n"
                             f"    endpoint_url: {endpoint}\n    region: us-east-1\n"
                             "    access_key_id_file: id\n    secret_access_key_file: secret\n")
    backup_s3.client(stack).create_bucket(Bucket=bucket)
    return stack


def test_upload_list_prune_and_download(tmp_path: Path, s3_server: str) -> None:
    stack = s3_stack(tmp_path, s3_server, "bkt-prune",
                     keep="  keep: {daily: 2, weekly: 0, monthly: 0}\n")
    s3 = backup_s3.client(stack)
    # What prefectstack did not make is never pruned: other names, other stacks' backups.
    for key in ("site/prod/notes.txt", "site/prod/other-backup-20200101T000000Z.tar"):
        s3.put_object(Bucket="bkt-prune", Key=key, Body=b"keep me")
    start = datetime(2026, 11, 1, 3, tzinfo=UTC)
    urls = []
    for day in range(4):
        name = mf.backup_name("prod", start + timedelta(days=day), set(), encrypted=day == 3)
        path = tmp_path / name
        path.write_bytes(f"backup {day}".encode())
        urls.append(backup_s3.upload(stack, path))
    assert urls[0] == "s3://bkt-prune/site/prod/prod-backup-20261101T030000Z.tar"
    listed = backup_s3.listing(stack)
    assert [e["file"] for e in listed] == urls[::-1]
    assert listed[0]["encrypted"] and listed[0]["location"] == "s3"
    assert listed[0]["size_bytes"] == len(b"backup 3")
    assert backup_s3.prune(stack) == urls[:2]
    assert [e["file"] for e in backup_s3.listing(stack)] == urls[:1:-1]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="bkt-prune")["Contents"]}
    assert {"site/prod/notes.txt", "site/prod/other-backup-20200101T000000Z.tar"} <= keys
    out = tmp_path / "fetched.tar"
    backup_s3.download(stack, urls[2], out)
    assert out.read_bytes() == b"backup 2" and out.stat().st_mode & 0o777 == 0o600


def test_restore_fetches_and_decrypts_from_s3(tmp_path: Path, s3_server: str) -> None:
    key, public = keypair(tmp_path)
    stack = s3_stack(tmp_path, s3_server, "bkt-restore",
                     keep=f"  encrypt:\n    recipients: [{public}]\n"
                          f"    identity_file: {key.name}\n")
    plain = tmp_path / "b.tar"
    plain.write_bytes(b"the tar")
    sealed = tmp_path / "prod-backup-20261101T030000Z.tar.age"
    backup_crypt.encrypt(plain, sealed, [public])
    url = backup_s3.upload(stack, sealed)
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    out = _fetch_and_decrypt(stack, url, fetched)
    assert out.read_bytes() == b"the tar"
    assert sorted(p.name for p in fetched.iterdir()) == [out.name]  # the download is gone


def test_s3_failures_are_clear_and_leave_nothing(tmp_path: Path, s3_server: str) -> None:
    stack = s3_stack(tmp_path, s3_server, "bkt-fail")
    out = tmp_path / "fetched.tar"
    with pytest.raises(StackError, match=r"S3 download of s3://bkt-fail/nope\.tar failed"):
        backup_s3.download(stack, "s3://bkt-fail/nope.tar", out)
    assert not out.exists()
    missing = loaded(tmp_path, f"  s3:\n    bucket: no-such-bucket\n    endpoint_url: "
                               f"{s3_server}\n    access_key_id_file: id\n"
                               "    secret_access_key_file: secret\n")
    path = tmp_path / "prod-backup-20261101T030000Z.tar"
    path.write_bytes(b"x")
    with pytest.raises(StackError, match=r"bucket no-such-bucket at http://127\.0\.0\.1") as info:
        backup_s3.upload(missing, path)
    assert "\n" not in info.value.message
