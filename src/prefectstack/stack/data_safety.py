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
