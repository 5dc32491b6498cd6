"""Run several deployments at once, wait for all of them, and say which succeeded.

The seed documents' "run multiple flows" job. Each call becomes a child flow run of this one
(created with `run_deployment`, linked as a subflow so the UI draws the tree); the children
run on whatever workers serve their deployments' pools, in parallel. The parent waits for all
of them (each up to `timeout_seconds`), publishes a table artifact with one row per child,
and returns the aggregate. When any child failed, crashed, was cancelled or did not finish in
time, the parent run ends Failed, with the summary as its state message and the aggregate as
its result (`state.result(raise_on_failure=False)`).

Mind the pool concurrency: the parent occupies a worker slot while it waits, so a pool whose
limit is 1 can never start the children of a parent that runs in it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from prefect import State, flow, get_client, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.states import Cancelling, Completed, Failed
from pydantic import BaseModel, Field

from prefectstack.flows._common import shorten

Outcome = Literal["succeeded", "failed"]


class DeploymentCall(BaseModel):
    """One child run: which deployment, with which parameters."""

    deployment: str = Field(description="`flow-name/deployment-name`, or the deployment's id.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Parameters, merged over the deployment's defaults."
    )
    label: str | None = Field(None, description="Name in the summary (default: the deployment).")


class ChildResult(BaseModel):
    """What became of one call."""

    label: str
    deployment: str
    outcome: Outcome
    state: str
    message: str = ""
    flow_run_id: str | None = None


def labels_for(calls: list[DeploymentCall]) -> list[str]:
    """A distinct label per call: its own, or the deployment name (numbered when repeated)."""
    base = [c.label or c.deployment for c in calls]
    return [b if base.count(b) == 1 else f"{b}#{base[:i].count(b) + 1}" for i, b in enumerate(base)]


def classify(label: str, call: DeploymentCall, run: FlowRun | BaseException) -> ChildResult:
    """Turn a finished (or timed-out, or never created) child run into a result row."""
    if isinstance(run, BaseException):
        message = shorten(f"{type(run).__name__}: {run}")
        return ChildResult(
            label=label, deployment=call.deployment, outcome="failed", state="NOT CREATED",
            message=message,
        )
    state = run.state
    final = bool(state and state.is_final())
    ok = bool(state and state.is_completed())
    message = shorten(state.message or "") if state else ""
    if not final:
        message = "did not finish in time" + (f" ({message})" if message else "")
    return ChildResult(
        label=label,
        deployment=call.deployment,
        outcome="succeeded" if ok else "failed",
        state=(state.name or state.type.value) if state else "UNKNOWN",
        message=message,
        flow_run_id=str(run.id),
    )


def summarize(results: list[ChildResult]) -> str:
    """One line: how many succeeded, and each failure with its state and reason."""
    failed = [r for r in results if r.outcome == "failed"]
    head = f"{len(results) - len(failed)} of {len(results)} run(s) succeeded"
    if not failed:
        return head
    details = "; ".join(
        f"{r.label}: {r.state}" + (f" - {r.message}" if r.message else "") for r in failed
    )
    return f"{head}; failed: {details}"


async def _cancel_unfinished(runs: list[FlowRun | BaseException]) -> None:
    """Do not leave timed-out children running after the parent gave up on them."""
    async with get_client() as client:
        for run in runs:
            if isinstance(run, FlowRun) and run.state and not run.state.is_final():
                await client.set_flow_run_state(run.id, Cancelling(message="fan-out timed out"))


@flow(name="fan-out")
async def fan_out(
    calls: list[DeploymentCall],
    timeout_seconds: float = 3600,
    poll_interval_seconds: float = 5,
    cancel_on_timeout: bool = True,
    artifact_key: str = "fan-out-summary",
) -> State[dict[str, Any]]:
    """Start every call's deployment concurrently and wait for all of them.

    Args:
        calls: The child runs, e.g. `[{"deployment": "hello/hello", "parameters": {"name":
            "a"}}, {"deployment": "shell-command/shell", "label": "nightly"}]`.
        timeout_seconds: How long to wait for each child to reach a final state.
        poll_interval_seconds: How often to check the children's states.
        cancel_on_timeout: Cancel children still running when the timeout is reached.
        artifact_key: Key of the table artifact with one row per child.

    Returns:
        `{"succeeded": [labels], "failed": [labels], "runs": [rows]}`; the run is Completed
        when every child completed, Failed (with the summary as message) otherwise.
    """
    logger = get_run_logger()
    labels = labels_for(calls)
    runs: list[FlowRun | BaseException] = await asyncio.gather(
        *(
            arun_deployment(
                name=call.deployment,
                parameters=call.parameters,
                timeout=timeout_seconds,
                poll_interval=poll_interval_seconds,
                as_subflow=True,
            )
            for call in calls
        ),
        return_exceptions=True,
    )
    results = [classify(*item) for item in zip(labels, calls, runs, strict=True)]
    if cancel_on_timeout:
        await _cancel_unfinished(runs)
    summary = summarize(results)
    rows = [r.model_dump() for r in results]
    await acreate_table_artifact(key=artifact_key, table=rows, description=summary)
    aggregate: dict[str, Any] = {
        "succeeded": [r.label for r in results if r.outcome == "succeeded"],
        "failed": [r.label for r in results if r.outcome == "failed"],
        "runs": rows,
    }
    if aggregate["failed"]:
        logger.error(summary)
        return Failed(message=summary, data=aggregate)
    logger.info(summary)
    return Completed(message=summary, data=aggregate)
