"""Copies of backups in an S3-compatible bucket (`backup.s3`): uploaded after the local file
is written, listed beside the local ones, pruned by the same policy (only keys prefectstack
named), and fetched for `prefectstack restore s3://BUCKET/KEY`. boto3 (the `s3` extra) does
the work: multipart uploads and downloads that stream from and to disk."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefectstack.errors import StackError
from prefectstack.runtime import backup_manifest as mf
from prefectstack.runtime import backup_retention as retention
from prefectstack.stack.data_safety import BackupS3
from prefectstack.stack.loader import LoadedStack

SCHEME = "s3://"


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    bucket, _, key = url.removeprefix(SCHEME).partition("/")
    if not url.startswith(SCHEME) or not bucket or not key or key.endswith("/"):
        raise StackError(f"`{url}` is not an S3 object URL",
                         hint="give it as s3://BUCKET/KEY, as `backup list` shows it")
    return bucket, key


def _secret_from_file(path: Path, what: str, private: bool) -> str:
    try:
        info = path.stat()
        value = path.read_text().strip()
    except OSError as exc:
        raise StackError(f"cannot read the S3 {what} file {path} ({exc.strerror})",
                         hint=f"check backup.s3's {what} file") from None
    if private and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StackError(f"the S3 {what} file {path} is readable by others "
                         f"(mode {stat.S_IMODE(info.st_mode):o})", hint=f"chmod 600 {path}")
    if not value:
        raise StackError(f"the S3 {what} file {path} is empty")
    return value


def credentials(cfg: BackupS3, base_dir: Path,
                environ: dict[str, str] | os._Environ[str] = os.environ,
                ) -> tuple[str | None, str | None]:
    """The access key id and secret: a file named in the stack file wins over the variable;
    (None, None) leaves boto3 its own chain (instance role, ~/.aws)."""
    key_id = (_secret_from_file(base_dir / cfg.access_key_id_file, "access key id", False)
              if cfg.access_key_id_file else environ.get(cfg.access_key_id_env) or None)
    secret = (_secret_from_file(base_dir / cfg.secret_access_key_file, "secret access key",
                                True)
              if cfg.secret_access_key_file else environ.get(cfg.secret_access_key_env) or None)
    if (key_id is None) != (secret is None):
        raise StackError("backup.s3 has only half of its credentials (an access key id "
                         "without its secret, or the other way round)",
                         hint=f"set both {cfg.access_key_id_env} and "
                              f"{cfg.secret_access_key_env}, or both files")
    return key_id, secret


def client(loaded: LoadedStack) -> Any:
    cfg = _config(loaded)
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StackError("backup.s3 needs boto3, which is not installed",
                         hint="pip install 'prefectstack[s3]'") from None
    key_id, secret = credentials(cfg, loaded.base_dir)
    return boto3.client(
        "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
        aws_access_key_id=key_id, aws_secret_access_key=secret,
        config=Config(connect_timeout=10, read_timeout=120,
                      retries={"max_attempts": 5, "mode": "standard"}))


def _config(loaded: LoadedStack) -> BackupS3:
    cfg = loaded.stack.backup.s3
    if cfg is None:
        raise StackError("the stack file has no backup.s3 section",
                         hint="add backup.s3 (bucket, endpoint_url, credentials)")
    return cfg


def _failure(exc: Exception, action: str, cfg: BackupS3) -> StackError:
    where = cfg.endpoint_url or "AWS S3"
    text = " ".join(str(exc).split())
    return StackError(f"S3 {action} failed (bucket {cfg.bucket} at {where}): {text}",
                      hint="check backup.s3 (endpoint, bucket, region) and its credentials")


def _errors() -> tuple[type[Exception], ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, Boto3Error)


def upload(loaded: LoadedStack, path: Path) -> str:
    cfg = _config(loaded)
    s3 = client(loaded)
    key = cfg.prefix + path.name
    try:
        s3.upload_file(str(path), cfg.bucket, key)
    except _errors() as exc:
        raise _failure(exc, f"upload of {path.name}", cfg) from None
    return f"{SCHEME}{cfg.bucket}/{key}"


def _ours(loaded: LoadedStack, s3: Any) -> list[dict[str, Any]]:
    """This stack's backups under the prefix (named as prefectstack names them)."""
    cfg = _config(loaded)
    found = []
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket,
                                                             Prefix=cfg.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"][len(cfg.prefix):]
                match = mf.NAME_PATTERN.match(name)
                if match and match.group("stack") == loaded.stack.name:
                    found.append({"key": obj["Key"], "name": name, "size": obj["Size"]})
    except _errors() as exc:
        raise _failure(exc, "listing", cfg) from None
    return found


def listing(loaded: LoadedStack) -> list[dict[str, Any]]:
    """The bucket's copies, in the shape of the local listing, newest first."""
    cfg = _config(loaded)
    now = datetime.now(UTC)
    out = []
    for obj in _ours(loaded, client(loaded)):
        made = mf.made_at(obj["name"])
        assert made is not None
        out.append({"file": f"{SCHEME}{cfg.bucket}/{obj['key']}", "location": "s3",
                    "created_at": made.isoformat(),
                    "age_seconds": int((now - made).total_seconds()),
                    "size_bytes": obj["size"], "encrypted": obj["name"].endswith(".age")})
    return sorted(out, key=lambda e: e["created_at"], reverse=True)


def prune(loaded: LoadedStack) -> list[str]:
    """Delete the bucket's copies beyond `backup.keep` (only keys prefectstack named)."""
    cfg = _config(loaded)
    s3 = client(loaded)
    objects = {o["name"]: o["key"] for o in _ours(loaded, s3)}
    dated = [(name, made) for name in objects if (made := mf.made_at(name)) is not None]
    doomed = retention.to_prune(dated, loaded.stack.backup.keep)
    try:
        for name in doomed:
            s3.delete_object(Bucket=cfg.bucket, Key=objects[name])
    except _errors() as exc:
        raise _failure(exc, "pruning", cfg) from None
    return [f"{SCHEME}{cfg.bucket}/{objects[name]}" for name in doomed]


def download(loaded: LoadedStack, url: str, dst: Path) -> None:
    """Fetch `url` into a new 0600 file `dst` (nothing is left behind on failure)."""
    bucket, key = parse_url(url)
    cfg = _config(loaded)
    s3 = client(loaded)
    os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        s3.download_file(bucket, key, str(dst))
        dst.chmod(0o600)
    except _errors() as exc:
        dst.unlink(missing_ok=True)
        raise _failure(exc, f"download of {url}", cfg) from None
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
