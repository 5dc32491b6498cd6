"""Deployments as code: the stack-file models for work pools, deployments, global concurrency
limits, variables and secrets that `prefectstack deploy` keeps in sync with a Prefect server.

Pure like model.py: never reads the disk or the environment. What needs either (a secret's
value, a flow's signature, a work-pool type's default job template) is checked when a plan
is made, by `prefectstack.deploy.desired`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from prefectstack.stack.base import StrictModel
from prefectstack.stack.values import check_cron, check_rrule, check_timezone

# Marks the deployments and variables prefectstack manages; other object types are listed
# in the `prefectstack_managed_<kind>` variables instead (they have no tags).
MANAGED_TAG = "prefectstack:managed"

ObjectName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
VariableName = Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,255}$")]
BlockName = Annotated[str, Field(pattern=r"^[a-z0-9-]{1,100}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Tag = Annotated[str, Field(min_length=1, max_length=100)]


def _json_value(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(
            "must be plain JSON data: strings, numbers, booleans, null, lists and mappings "
            "(quote dates and times)"
        ) from None
    return value


JsonValue = Annotated[Any, AfterValidator(_json_value)]


def _unique(what: str, key: Callable[[Any], str] = lambda item: item.name) -> Callable[
    [Sequence[Any]], Any
]:
    def check(items: Sequence[Any]) -> Any:
        keys = [key(item) for item in items]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"{what} names must be unique; repeated: {', '.join(dupes)}")
        return items

    return check


def _no_reserved_tag(tags: list[str]) -> list[str]:
    if MANAGED_TAG in tags:
        raise ValueError(f"`{MANAGED_TAG}` is added by prefectstack itself; remove it here")
    return tags


Tags = Annotated[list[Tag], AfterValidator(_no_reserved_tag)]


class WorkQueueConfig(StrictModel):
    """A work queue inside a work pool."""

    name: ObjectName = Field(description="Queue name, unique in its pool.")
    priority: int | None = Field(
        None, ge=1, description="Priority (1 is the highest). Unset: Prefect picks the next free."
    )
    concurrency_limit: int | None = Field(
        None, ge=0, description="Maximum concurrent flow runs from this queue (unset: no limit)."
    )
    description: str | None = Field(None, description="Shown in the UI.")
    paused: bool = Field(False, description="A paused queue hands out no runs.")


class WorkPoolConfig(StrictModel):
    """A work pool: where deployments send their runs and workers pick them up."""

    name: ObjectName = Field(
        description="Pool name (names starting with `prefect` are reserved by Prefect)."
    )
    type: str = Field(
        "process",
        pattern=r"^[a-z0-9][a-z0-9:_-]*$",
        description=(
            "Worker type: `process` for workers on hosts (local or `prefectstack worker "
            "join`), or an integration's type such as `docker`, `kubernetes`, `ecs`, "
            "`cloud-run`, `azure-container-instance` for workers you run elsewhere."
        ),
    )
    description: str | None = Field(None, description="Shown in the UI.")
    concurrency_limit: int | None = Field(
        None, ge=0, description="Maximum concurrent flow runs in the pool (unset: no limit)."
    )
    paused: bool = Field(False, description="A paused pool hands out no runs.")
    base_job_template: dict[str, JsonValue] = Field(
        default_factory=dict,
        description=(
            "Overrides of the base job template: job variable name → new default (e.g. "
            "`image`, `cpu`, `memory`, `env`). Checked against the type's default template "
            "when its integration package is installed here, passed through with a warning "
            "otherwise."
        ),
    )
    queues: Annotated[list[WorkQueueConfig], AfterValidator(_unique("queue"))] = Field(
        default_factory=list,
        description="Work queues of the pool (Prefect creates `default` by itself).",
    )

    @model_validator(mode="after")
    def _not_reserved(self) -> WorkPoolConfig:
        if self.name.lower().startswith("prefect"):
            raise ValueError(f"pool name `{self.name}`: names starting with `prefect` are reserved")
        return self


class SourceConfig(StrictModel):
    """Where a worker gets a deployment's code: a local directory, or a git repository."""

    path: str | None = Field(
        None,
        description=(
            "Local directory with the code, relative to the stack file; workers must see the "
            "same path (this host or a shared filesystem). Default: the stack file's "
            "directory, when `git` is not set."
        ),
    )
    git: str | None = Field(
        None,
        pattern=r"^(https?|ssh|git|file)://|^[\w.-]+@[\w.-]+:",
        description="Git repository URL (https://, ssh://, git@host:org/repo, file://).",
    )
    branch: str | None = Field(None, description="Branch to check out (default: the remote's).")
    tag: str | None = Field(None, description="Tag to check out instead of a branch.")
    credentials: BlockName | None = Field(
        None,
        description=(
            "Name of a Prefect Secret block holding an access token for the repository "
            "(declare it under `secrets`, or create it on the server yourself)."
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if self.path is not None and self.git is not None:
            raise ValueError("set either `path` or `git`, not both")
        if self.git is None:
            extra = [k for k in ("branch", "tag", "credentials") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"`{'`, `'.join(extra)}` only apply to a `git` source")
        if self.branch is not None and self.tag is not None:
            raise ValueError("set either `branch` or `tag`, not both")
        return self


class ScheduleConfig(StrictModel):
    """One schedule of a deployment: exactly one of `cron`, `interval` or `rrule`."""

    cron: str | None = Field(None, description="Cron expression, e.g. `0 9 * * 1-5`.")
    interval: float | None = Field(None, gt=0, description="Interval in seconds, e.g. `3600`.")
    rrule: str | None = Field(
        None, description="iCalendar recurrence rule, e.g. `FREQ=WEEKLY;BYDAY=MO,WE,FR`."
    )
    timezone: str | None = Field(
        None,
        description=(
            "IANA time zone, e.g. `Europe/Berlin` (default: UTC; for `interval`, the anchor's)."
        ),
    )
    anchor_date: datetime | None = Field(
        None,
        description=(
            "`interval` only: the instant intervals count from (ISO 8601; without an offset "
            "it is read in `timezone`). Default: when the schedule is created."
        ),
    )
    day_or: bool = Field(
        True,
        description="`cron` only: day-of-month and day-of-week match with OR (false: AND).",
    )
    active: bool = Field(True, description="false pauses this schedule but keeps it.")
    parameters: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Parameters for runs of this schedule, over the deployment's.",
    )

    # Parsed as Prefect parses them, so the server cannot refuse what validated here.
    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str | None) -> str | None:
        return None if cron is None else check_cron(cron)

    @field_validator("rrule")
    @classmethod
    def _rrule(cls, rrule: str | None) -> str | None:
        return None if rrule is None else check_rrule(rrule)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, timezone: str | None) -> str | None:
        return None if timezone is None else check_timezone(timezone)

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleConfig:
        kinds = [k for k in ("cron", "interval", "rrule") if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = ", ".join(f"`{k}`" for k in kinds) or "none"
            raise ValueError(f"set exactly one of `cron`, `interval`, `rrule` (got {got})")
        if self.anchor_date is not None and self.interval is None:
            raise ValueError("`anchor_date` only applies to an `interval` schedule")
        if not self.day_or and self.cron is None:
            raise ValueError("`day_or` only applies to a `cron` schedule")
        return self


class DeploymentConfig(StrictModel):
    """A deployment: a flow, where its code lives, where it runs, and when."""

    name: ObjectName = Field(description="Deployment name (unique per flow).")
    entrypoint: str = Field(
        pattern=r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_.]*$",
        description="The flow function, `path/to/file.py:function`, relative to the source.",
    )
    source: SourceConfig = Field(
        default_factory=SourceConfig,  # type: ignore[arg-type]
        description="Where workers get the code (default: the stack file's directory).",
    )
    work_pool: ObjectName = Field(
        description="Work pool for the runs: one under `work_pools`, a worker's, or existing."
    )
    work_queue: ObjectName = Field("default", description="Work queue in that pool.")
    schedules: list[ScheduleConfig] = Field(
        default_factory=list, description="Schedules; several are allowed, none means manual."
    )
    parameters: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Default parameters, checked against the flow function's signature.",
    )
    tags: Tags = Field(default_factory=list, description="Tags of the deployment and its runs.")
    description: str | None = Field(None, description="Shown in the UI.")
    version: str | None = Field(None, description="A version label, e.g. a release or commit.")
    concurrency_limit: int | None = Field(
        None, ge=1, description="Maximum concurrent runs of this deployment (unset: no limit)."
    )
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"] = Field(
        "ENQUEUE",
        description=(
            "What happens to a run over `concurrency_limit`: `ENQUEUE` waits, `CANCEL_NEW` "
            "is cancelled."
        ),
    )
    job_variables: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Overrides of the pool's job variables for this deployment (e.g. `env`).",
    )
    enforce_parameter_schema: bool = Field(
        True, description="The server rejects runs whose parameters do not match the flow."
    )
    paused: bool = Field(False, description="A paused deployment schedules no runs.")

    @model_validator(mode="after")
    def _strategy_needs_limit(self) -> DeploymentConfig:
        if self.collision_strategy != "ENQUEUE" and self.concurrency_limit is None:
            raise ValueError("`collision_strategy` needs a `concurrency_limit`")
        return self


class ConcurrencyLimitConfig(StrictModel):
    """A global concurrency limit, used by `concurrency()` / `rate_limit()` in flows."""

    name: ObjectName = Field(description="Limit name, as flows refer to it.")
    limit: int = Field(ge=0, description="Number of slots.")
    active: bool = Field(True, description="An inactive limit does not restrict anything.")
    slot_decay_per_second: float = Field(
        0.0, ge=0,
        description="Slots freed per second (rate limiting); 0 keeps them until released.",
    )


class VariableConfig(StrictModel):
    """A Prefect variable (plain configuration; use `secrets` for anything sensitive)."""

    name: VariableName = Field(description="Variable name (lowercase, digits, `-`, `_`).")
    value: JsonValue = Field(
        description="Any JSON value: string, number, boolean, list or mapping."
    )
    tags: Tags = Field(default_factory=list, description="Tags of the variable.")


class SecretConfig(StrictModel):
    """A Prefect Secret block. The value is read when planning, from an environment variable
    or a file, and stored only on the server, never in stack.yaml or rendered files."""

    name: BlockName = Field(description="Block name (lowercase, digits, dashes).")
    env: EnvName | None = Field(None, description="Environment variable holding the value.")
    file: str | None = Field(
        None,
        description="File holding the value (relative to the stack file; one trailing newline "
        "is dropped).",
    )

    @model_validator(mode="after")
    def _one_origin(self) -> SecretConfig:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of `env` or `file`")
        return self


def _unique_deployments(items: Sequence[DeploymentConfig]) -> Sequence[DeploymentConfig]:
    keys = [f"{d.entrypoint} {d.name}" for d in items]
    dupes = sorted({k.replace(" ", " / ") for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"a flow's deployment names must be unique; repeated: {', '.join(dupes)}")
    return items


WorkPools = Annotated[list[WorkPoolConfig], AfterValidator(_unique("work pool"))]
Deployments = Annotated[list[DeploymentConfig], AfterValidator(_unique_deployments)]
ConcurrencyLimits = Annotated[
    list[ConcurrencyLimitConfig], AfterValidator(_unique("concurrency limit"))
]
Variables = Annotated[list[VariableConfig], AfterValidator(_unique("variable"))]
Secrets = Annotated[list[SecretConfig], AfterValidator(_unique("secret"))]
