"""What a forked child runs: Prefect's workspace preparation (pull steps), then the engine,
both in this process, as `python -m prefect.runner._workspace_supervisor CONFIG` followed by
its `exec` of `python -m prefect.engine` would.

Everything here runs after the fork: the flow's own modules are imported here, never in the
parent, so edited flow code takes effect on the next run.
"""

from __future__ import annotations

import atexit
import importlib
import os
import runpy
import sys
import threading
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefectstack.warm.protocol import apply_environment, child_sys_path

_applied: dict[str, str] | None = None  # the Prefect settings environment last applied


def settings_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables Prefect's settings read (`PREFECT_*`, not the runner's `PREFECT__*`)."""
    return {k: v for k, v in environ.items()
            if k.startswith("PREFECT_") and not k.startswith("PREFECT__")}


def refresh_prefect_settings(parent_environ: Mapping[str, str]) -> None:
    """Prefect reads its settings from the environment once, at import (in the parent):
    rebuild them from this run's environment, and its logging set-up (costly: it serializes
    every setting) only when a logging setting differs from the parent's."""
    global _applied
    import prefect.context
    from prefect.logging.configuration import setup_logging

    now = settings_environment(os.environ)
    if now == (_applied if _applied is not None else settings_environment(parent_environ)):
        return  # the settings in force were built from this very environment
    prefect.context.refresh_global_settings_context()
    logging_keys = {k for k in now.keys() | parent_environ.keys()
                    if k.startswith("PREFECT_LOGGING_") or k == "PREFECT_HOME"}
    if any(now.get(k) != parent_environ.get(k) for k in logging_keys):
        setup_logging(incremental=False)
    _applied = now


def label_process(environ: Mapping[str, str], keys: tuple[str, ...] = ("PREFECT__FLOW_RUN_ID",)
                  ) -> bool:
    """Show `keys` of this run's environment in /proc/<pid>/environ, as a process started
    with them would: tools that find a run's process by its environment (`prefectstack
    reconcile`, `ps e`) read that, and a forked child otherwise shows its parent's initial
    environment there. Linux only; call after the run's environment is applied with
    `os.environ`, which moves every C-level variable out of that initial block."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50, 51)
    except (OSError, IndexError, ValueError):
        return False
    block = b"".join(f"{k}={environ[k]}".encode() + b"\0" for k in keys if k in environ)
    if not block or len(block) > end - start:
        return False
    import ctypes

    ctypes.memmove(start, block + b"\0" * (end - start - len(block)), end - start)
    return True


async def prepare(config_path: Path) -> tuple[list[str], Path, dict[str, str]]:
    """Prefect's `_workspace_supervisor.supervise` up to the launch of the engine: run the
    deployment's pull steps and work out the engine's command, directory and environment."""
    from prefect.logging.handlers import APILogHandler
    from prefect.runner import _workspace_supervisor as sup
    from prefect.runner._workspace_resolver import prepare_workspace_for_flow_run
    from prefect.runner._workspace_runtime import (
        PreparedWorkspaceManifest,
        WorkspaceSupervisorConfig,
        read_model,
        write_private_model,
    )
    from prefect.runner._workspace_starter import _workspace_command, workspace_environment
    from prefect.utilities.processutils import (
        command_from_string,
        get_sys_executable,
        sanitize_subprocess_env,
    )

    config = read_model(config_path, WorkspaceSupervisorConfig)
    runner_environment = {
        k: v for k, v in os.environ.items() if sup._runner_owns_environment_key(k)
    }
    workspace = await prepare_workspace_for_flow_run(config.flow_run_id, config.workspace_root)
    environment = sanitize_subprocess_env(workspace_environment(workspace))
    sup._restore_runner_environment(environment, runner_environment)
    environment["PREFECT__FLOW_RUN_ID"] = str(config.flow_run_id)
    environment["PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS"] = "false"
    selected = _workspace_command(workspace, config.command, environment=environment)
    command = (
        command_from_string(selected) if selected is not None
        else [get_sys_executable(), "-m", "prefect.engine"]
    )
    environment["PREFECT__FLOW_ENTRYPOINT"] = workspace.runtime_entrypoint
    write_private_model(
        config.manifest_path,
        PreparedWorkspaceManifest(
            working_directory=workspace.working_directory,
            project_root=workspace.project_root,
            runtime_entrypoint=workspace.runtime_entrypoint,
            hook_command=sup._hook_command(command),
            environment=environment,
        ),
    )
    await APILogHandler.aflush()
    return command, workspace.working_directory, environment


def is_plain_engine(command: list[str]) -> bool:
    return command[1:] == ["-m", "prefect.engine"] and os.path.realpath(
        command[0]
    ) == os.path.realpath(sys.executable)


def run_engine(
    cwd: Path, environment: dict[str, str], base_path: list[str],
    parent_environ: Mapping[str, str],
) -> int:
    """`python -m prefect.engine` in this process."""
    os.chdir(cwd)
    apply_environment(os.environ, environment)  # type: ignore[arg-type]
    sys.path[:] = child_sys_path(base_path, str(cwd), environment)
    importlib.invalidate_caches()
    refresh_prefect_settings(parent_environ)
    sys.argv = ["-m"]  # the engine takes the flow run id from the environment
    with warnings.catch_warnings():
        # prefect.engine is imported in the parent; running it as __main__ is what -m does.
        warnings.simplefilter("ignore", RuntimeWarning)
        return _run_main(
            lambda: runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
        )


def _run_main(main: Any) -> int:
    try:
        main()
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def supervise(
    config_path: str, base_path: list[str], parent_environ: Mapping[str, str],
) -> int:
    """The child's whole life: prepare the workspace, then run (or exec) the engine."""
    import anyio

    refresh_prefect_settings(parent_environ)
    prepared: list[Any] = []

    def _prepare() -> None:
        prepared.extend(anyio.run(prepare, Path(config_path)))

    code = _run_main(_prepare)
    if code != 0 or not prepared:
        return code or 1
    command, cwd, environment = prepared
    if not is_plain_engine(command):
        # A uv project or a custom command: exec it, as Prefect's supervisor does.
        os.chdir(cwd)
        os.execvpe(command[0], command, environment)
    return run_engine(cwd, environment, base_path, parent_environ)


def finish(code: int) -> None:
    """End the child as an interpreter would (join threads, atexit, flush), then _exit so
    nothing of the parent's stack runs on."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF if code >= 0 else 1)
