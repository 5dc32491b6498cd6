"""Data safety as stack-file sections: how long Prefect keeps its history (`retention:`) and
how the stack is backed up (`backup:`). Pure."""

from __future__ import annotations

from datetime import UTC, datetime

from cronsim import CronSim, CronSimError
from pydantic import Field, field_validator, model_validator

from prefectstack.stack.base import StrictModel


class RetentionConfig(StrictModel):
    """How long history is kept; Prefect's own vacuum service deletes what is older (the
    names and behaviour below are Prefect 3.8.8's `prefect/server/services/db_vacuum.py`)."""

    flow_runs_days: int | None = Field(
        30, ge=1, le=3650,
        description=(
            "Top-level flow runs that ended (Completed, Failed, Cancelled or Crashed) more than "
            "this many days ago are deleted with their states, task runs, subflow runs, logs "
            "and artifacts; runs that never finished are kept "
            "(PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD; also turns on Prefect's "
            "daily clean-up of orphaned logs and artifacts). `null` keeps them forever."
        ),
    )
    events_days: int = Field(
        7, ge=1, le=3650,
        description="Events and their related-resource rows older than this many days are "
        "deleted (PREFECT_SERVER_EVENTS_RETENTION_PERIOD; flow-run heartbeats are kept at most "
        "7 days).",
    )
    vacuum_interval_seconds: int = Field(
        3600, ge=1, le=86400,
        description="How often the vacuum looks for flow runs and events past their retention "
        "(PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS; Prefect's default, an hour).",
    )
    audit_days: int = Field(
        90, ge=1, le=3650,
        description="Audit-log records of the auth service older than this many days are "
        "deleted (when the service starts, and at most hourly as it writes; a log that "
        "gets no new records does not grow).",
    )


class BackupKeep(StrictModel):
    """How many scheduled backups are kept: the newest of each day, ISO week and month."""

    daily: int = Field(7, ge=0, le=366, description="Daily backups kept.")
    weekly: int = Field(4, ge=0, le=520, description="Weekly backups kept.")
    monthly: int = Field(6, ge=0, le=240, description="Monthly backups kept.")

    @model_validator(mode="after")
    def _keeps_something(self) -> BackupKeep:
        if self.daily + self.weekly + self.monthly == 0:
            raise ValueError("keep at least one backup (daily, weekly or monthly above 0)")
        return self


class BackupEncryption(StrictModel):
    """Backups encrypted with age (https://age-encryption.org): to its public keys
    (recipients), so the machine that takes them never holds what decrypts them. Any age
    tool decrypts them: `age -d -i KEY FILE.tar.age > FILE.tar`."""

    recipients: list[str] = Field(
        ..., min_length=1,
        description="age public keys (`age1...`) backups are encrypted to; any one of the "
        "matching private keys decrypts. Make a pair with `prefectstack backup keygen` or "
        "`age-keygen`.",
    )
    identity_file: str | None = Field(
        None,
        description="The age private key file `prefectstack restore` decrypts with "
        "(relative to the stack file; mode 0600, as `age-keygen -o` writes it). Needed only "
        "where backups are restored; keep a copy off this machine.",
    )

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, recipients: list[str]) -> list[str]:
        from pyrage import RecipientError, x25519

        for recipient in recipients:
            try:
                x25519.Recipient.from_str(recipient)
            except RecipientError:
                raise ValueError(
                    f"`{recipient[:70]}` is not an age public key (`age1` and 58 more "
                    "letters/digits, as `age-keygen -y KEY` prints it)") from None
        return recipients

    @field_validator("identity_file")
    @classmethod
    def _identity(cls, identity: str | None) -> str | None:
        if identity is not None and (not identity.strip() or "\0" in identity):
            raise ValueError("give the path of an age identity file, e.g. `backup.key`")
        if identity is not None and identity.startswith("AGE-SECRET-KEY-"):
            raise ValueError("never put the private key itself in the stack file: give the "
                             "path of a file that holds it")
        return identity


class BackupS3(StrictModel):
    """A copy of each backup in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...),
    uploaded after it is written locally; retention prunes the bucket's copies too (only
    objects prefectstack named). Credentials come from environment variables or files named
    here, never from the stack file itself."""

    bucket: str = Field(..., min_length=3, max_length=63, description="The bucket's name.")
    prefix: str = Field(
        "", max_length=512,
        description="Key prefix of the uploaded backups, e.g. `prefectstack/prod/`.",
    )
    endpoint_url: str | None = Field(
        None,
        description="The S3 API's URL for a non-AWS service, e.g. `https://minio.example:9000`"
        "; default: AWS's endpoint for `region`.",
    )
    region: str | None = Field(None, description="The bucket's region, e.g. `eu-west-1`.")
    access_key_id_env: str = Field(
        "AWS_ACCESS_KEY_ID",
        description="Environment variable holding the access key id (used when "
        "`access_key_id_file` is not set).",
    )
    secret_access_key_env: str = Field(
        "AWS_SECRET_ACCESS_KEY",
        description="Environment variable holding the secret access key (used when "
        "`secret_access_key_file` is not set).",
    )
    access_key_id_file: str | None = Field(
        None, description="File holding the access key id (relative to the stack file).",
    )
    secret_access_key_file: str | None = Field(
        None,
        description="File holding the secret access key (relative to the stack file; must not "
        "be readable by group or others).",
    )

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, bucket: str) -> str:
        import re

        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ValueError(f"`{bucket}` is not a bucket name (3-63 lowercase letters, "
                             "digits, `.` and `-`)")
        return bucket

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        if prefix.startswith("/") or "\0" in prefix:
            raise ValueError("a key prefix has no leading `/`, e.g. `prefectstack/prod/`")
        return prefix

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("https://", "http://")):
            raise ValueError(f"`{url}` is not an http(s) URL, e.g. `https://s3.example:9000`")
        return url

    @field_validator("access_key_id_env", "secret_access_key_env")
    @classmethod
    def _env_name(cls, name: str) -> str:
        if not name or not (name[0].isalpha() or name[0] == "_") or not all(
                c.isalnum() or c == "_" for c in name):
            raise ValueError(f"`{name}` is not an environment variable's name; give its name "
                             "(e.g. `AWS_SECRET_ACCESS_KEY`), never the secret itself")
        return name


class BackupConfig(StrictModel):
    """Backups of the whole stack: database, auth store, edge CA, secrets, stack file."""

    enabled: bool = Field(
        True,
        description="Take backups on `schedule`: the local stack runs a supervised `backup` "
        "service (a stack with its own PostgreSQL only). `false`: only `prefectstack backup` "
        "makes them.",
    )
    schedule: str = Field(
        "0 3 * * *",
        description="When scheduled backups run: a cron expression (5 fields, UTC). A backup "
        "older than one interval of it shows as overdue in `status`.",
    )
    destination: str | None = Field(
        None,
        description="Directory backups are written to (relative to the stack file); default: "
        "`<state_dir>/backups`.",
    )
    keep: BackupKeep = Field(
        default_factory=BackupKeep,  # type: ignore[arg-type]
        description="Retention of scheduled backups; only backups prefectstack made are pruned.",
    )
    encrypt: BackupEncryption | None = Field(
        None,
        description="Encrypt each backup with age to these public keys (the file is then "
        "`...tar.age`); default: not encrypted.",
    )
    s3: BackupS3 | None = Field(
        None,
        description="Upload each backup to an S3-compatible bucket (needs "
        "`pip install 'prefectstack[s3]'`); default: local only.",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str) -> str:
        if len(schedule.split()) != 5:
            raise ValueError(f"`{schedule}` is not a cron expression of 5 fields, "
                             "e.g. `0 3 * * *` (03:00 UTC daily)")
        try:
            CronSim(schedule, datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            raise ValueError(f"`{schedule}` is not a valid cron expression: {exc}") from None
        return schedule

    @field_validator("destination")
    @classmethod
    def _destination(cls, destination: str | None) -> str | None:
        if destination is not None and (not destination.strip() or "\0" in destination):
            raise ValueError("give a directory path, e.g. `/var/backups/prefectstack`")
        return destination
