"""`WarmProcessWorker`: Prefect's process worker with one step changed, the launch of a
flow run, which forks a child of the warm forkserver instead of starting an interpreter.

It serves ordinary `process` work pools (same type, same base job template), so the stock
`prefect worker start --type process` can serve the same pool and deployments do not change.
A run whose job variables set a `command` is launched the stock way.

`python -m prefectstack.warm.worker <prefect worker start args>` runs Prefect's own
`worker start` command (health check, signals, limits) with this worker class in place of
the stock one. `PREFECTSTACK_WARM_PRELOAD` (comma-separated) names extra modules for the
forkserver to import.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._process_manager import ProcessHandle, create_isolated_termination_scope
from prefect.runner._workspace_runtime import WorkspaceSupervisorConfig, write_private_model
from prefect.runner._workspace_starter import WorkspaceResolvingEngineCommandStarter
from prefect.settings import get_current_settings
from prefect.utilities.processutils import sanitize_subprocess_env
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from prefectstack.warm.client import ForkServer

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

IGNORED = anyio.TASK_STATUS_IGNORED
PRELOAD_ENV = "PREFECTSTACK_WARM_PRELOAD"  # comma-separated modules for the forkserver


_settings_env: tuple[object, dict[str, str]] | None = None


def settings_environment() -> dict[str, str]:
    """Prefect's settings in force as environment variables (`exclude_unset`), built once per
    settings object: serializing every setting costs ~15 ms, and Prefect's launch asks twice
    per run (the job's base environment, the run's environment)."""
    global _settings_env
    settings = get_current_settings()
    if _settings_env is None or _settings_env[0] is not settings:
        _settings_env = (settings, settings.to_environment_variables(exclude_unset=True))
    return dict(_settings_env[1])


class WarmJobConfiguration(ProcessJobConfiguration):
    """The process job configuration, fields and template unchanged, whose base environment
    comes from `settings_environment`."""

    @classmethod
    def _base_environment(cls) -> dict[str, str]:
        return settings_environment()


def run_environment(
    base: dict[str, str], job_env: dict[str, str | None], flow_run_id: str,
    control_env: dict[str, str],
) -> dict[str, str]:
    """The environment Prefect's EngineCommandStarter gives the workspace supervisor
    (`env_overrides_settings=True`): worker env, its Prefect settings, the job's env, then
    the runner's own variables."""
    env: dict[str, str | None] = {**base}
    env.update(settings_environment())
    env.update(job_env)
    env.update({
        "PREFECT__FLOW_RUN_ID": flow_run_id,
        "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
        **control_env,
        "PREFECT__DEPLOYMENT_NAME": job_env.get("PREFECT__DEPLOYMENT_NAME"),
    })
    return sanitize_subprocess_env(env)


class ForkingWorkspaceStarter(WorkspaceResolvingEngineCommandStarter):
    """Prefect's workspace starter, with the supervisor forked instead of spawned."""

    def __init__(self, *, forkserver: ForkServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._forkserver = forkserver

    async def start(
        self,
        flow_run: FlowRun,
        task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        write_private_model(
            self._config_path,
            WorkspaceSupervisorConfig(
                flow_run_id=flow_run.id,
                workspace_root=self._workspace_root,
                manifest_path=self._manifest_path,
                command=self._command,
            ),
        )
        control_env: dict[str, str] = {}
        registered = False
        if self._control_channel is not None:
            with contextlib.suppress(RuntimeError):  # channel disabled: kill-only cancel
                port, token = self._control_channel.register(flow_run.id)
                control_env = {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
                registered = True
        env = run_environment(dict(os.environ), self._environment, str(flow_run.id), control_env)
        handed_off = False
        try:
            with _output_fds(self._stream_output) as (out, err):
                child = await self._forkserver.spawn(
                    str(flow_run.id), [str(self._config_path)], env,
                    str(self._source_cwd) if self._source_cwd else None, out, err,
                )
            # The child is a session leader: cancellation signals its whole group.
            handle = ProcessHandle(child, create_isolated_termination_scope(child.pid))  # type: ignore[arg-type]
            handed_off = True
            task_status.started(handle)
            await child.wait()
        except BaseException:
            if registered and not handed_off and self._control_channel is not None:
                self._control_channel.unregister(flow_run.id)
            raise


@contextlib.contextmanager
def _output_fds(stream: bool) -> Any:
    if stream:
        sys.stdout.flush()
        sys.stderr.flush()
        yield sys.stdout.fileno(), sys.stderr.fileno()
        return
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        yield fd, fd
    finally:
        os.close(fd)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "matches existing registered type": meant, see main()

    class WarmProcessWorker(ProcessWorker):
        """A process worker whose flow runs are forked from a warm parent."""

        type = "process"
        job_configuration = WarmJobConfiguration
        _description = "Process worker whose flow runs fork from a pre-imported parent."
        _forkserver: ForkServer | None = None

        @property
        def forkserver(self) -> ForkServer:
            if self._forkserver is None:
                preload = [m for m in os.environ.get(PRELOAD_ENV, "").split(",") if m]
                self._forkserver = ForkServer(preload)
            return self._forkserver

        async def __aenter__(self) -> WarmProcessWorker:
            await self.forkserver.start()
            await super().__aenter__()
            return self

        async def __aexit__(self, *exc_info: Any) -> None:
            try:
                await super().__aexit__(*exc_info)
            finally:
                self.forkserver.close()

        async def run(
            self,
            flow_run: FlowRun,
            configuration: ProcessJobConfiguration,
            task_status: anyio.abc.TaskStatus[int] | None = None,
        ) -> ProcessWorkerResult:
            if configuration._command_configured:  # a custom command: the stock launch
                return await super().run(flow_run, configuration, task_status)
            if task_status is None:
                task_status = anyio.TASK_STATUS_IGNORED
            working_dir_ctx = (
                tempfile.TemporaryDirectory(suffix="prefect")
                if not configuration.working_dir
                else contextlib.nullcontext(configuration.working_dir)
            )
            execution: FlowRunExecutionResult | None = None
            with working_dir_ctx as working_dir, warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                async with FlowRunExecutorContext() as ctx:
                    root = Path(working_dir).resolve()
                    starter = ForkingWorkspaceStarter(
                        forkserver=self.forkserver,
                        workspace_root=root,
                        command=None,
                        stream_output=configuration.stream_output,
                        control_channel=ctx.control_channel,
                        source_cwd=root,
                        environment=configuration.env,
                    )
                    ctx.call_after_exit(starter.close)
                    executor = ctx.create_executor(
                        flow_run, starter, propose_submitting=False,
                        hook_runner=starter.hook_runner,
                    )

                    async def execute(
                        *, task_status: anyio.abc.TaskStatus[ProcessHandle] = IGNORED,
                    ) -> None:
                        nonlocal execution
                        execution = await executor.submit(task_status=task_status)

                    async with anyio.create_task_group() as tg:
                        handle = await tg.start(execute)
                        if handle.pid is None:
                            raise RuntimeError("Flow run process has no PID")
                        task_status.started(handle.pid)
            if execution is None or execution.status_code is None:
                raise RuntimeError("Failed to start flow run process.")
            return ProcessWorkerResult(
                status_code=execution.status_code, identifier=str(execution.handle.pid)
            )


# Runs at once per CPU core when the stack file sets no `limit`: Prefect's own default is no
# limit, and a burst of hundreds of runs then forks hundreds of children at once on a small
# machine. Flow runs mostly wait (on the API, the network, a database), so several per core.
RUNS_PER_CORE = 8


def with_default_limit(args: list[str], cores: int | None) -> list[str]:
    """`prefect worker start` arguments with `--limit` added unless one is given."""
    if any(a in ("--limit", "-l") or a.startswith("--limit=") for a in args):
        return args
    return [*args, "--limit", str(RUNS_PER_CORE * max(1, cores or 1))]


def main(argv: list[str] | None = None) -> None:
    """`prefect worker start ARGS` with the warm worker serving `process` pools; without a
    `--limit`, RUNS_PER_CORE runs per CPU core of this machine."""
    from prefect.cli import _worker_utils
    from prefect.cli._app import app

    original = _worker_utils._load_worker_class

    def load(worker_type: str) -> Any:
        return WarmProcessWorker if worker_type == "process" else original(worker_type)

    _worker_utils._load_worker_class = load
    args = with_default_limit(list(sys.argv[1:] if argv is None else argv), os.cpu_count())
    sys.argv = ["prefect", "worker", "start", *args]
    app()


if __name__ == "__main__":
    main()
