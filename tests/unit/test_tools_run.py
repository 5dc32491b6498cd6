"""`tools.run` and its siblings: how a program that is missing, fails or hangs reaches the
user. Real tiny programs (`true`, `false`, `sh -c`, `sleep`), no mocks."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from prefectstack import tools
from prefectstack.errors import StackError

PATH = {"PATH": "/usr/bin:/bin"}


def test_success_returns_the_completed_process_with_text_output() -> None:
    result = tools.run(["sh", "-c", "echo out; echo err >&2"])
    assert result.returncode == 0
    assert result.stdout == "out\n" and result.stderr == "err\n"
    assert result.args == ["sh", "-c", "echo out; echo err >&2"]


def test_true_succeeds_with_empty_output() -> None:
    result = tools.run(["true"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_input_text_goes_to_stdin() -> None:
    assert tools.run(["cat"], input_text="line one\nline two\n").stdout == "line one\nline two\n"


def test_env_replaces_the_environment_instead_of_extending_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PFS_TOOLS_TEST", "ours")
    out = tools.run(["sh", "-c", 'echo "${ONLY-unset} ${PFS_TOOLS_TEST-unset}"'],
                    env={**PATH, "ONLY": "given"}).stdout
    assert out == "given unset\n"


def test_without_env_the_environment_is_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFS_TOOLS_TEST", "inherited")
    assert tools.run(["sh", "-c", "echo $PFS_TOOLS_TEST"]).stdout == "inherited\n"


# -- errors -----------------------------------------------------------------------------------


def test_missing_program_is_a_stack_error_naming_it() -> None:
    with pytest.raises(StackError) as caught:
        tools.run(["prefectstack-no-such-program", "--flag"])
    assert caught.value.message == "program not found: prefectstack-no-such-program"
    assert caught.value.exit_code == 1
    assert caught.value.__suppress_context__  # no FileNotFoundError traceback attached


def test_missing_program_by_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "tool"
    with pytest.raises(StackError, match=f"^program not found: {missing}$"):
        tools.run([str(missing)])


def test_a_file_that_is_not_executable_is_a_permission_error(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)  # no x bit: even root cannot exec it
    with pytest.raises(StackError) as caught:
        tools.run([str(script)])
    assert caught.value.message == f"permission denied running {script}"


def test_false_fails_with_its_exit_code() -> None:
    with pytest.raises(StackError) as caught:
        tools.run(["false"])
    assert caught.value.message == "false failed with exit code 1:\n    "
    assert caught.value.exit_code == 1 and caught.value.hint is None


def test_failure_quotes_the_last_ten_lines_of_stderr() -> None:
    script = "echo to-stdout; for i in $(seq 1 15); do echo err-$i >&2; done; exit 3"
    with pytest.raises(StackError) as caught:
        tools.run(["/bin/sh", "-c", script])
    first, *quoted = caught.value.message.splitlines()
    assert first == "sh failed with exit code 3:"  # the program's name, not its full path
    assert quoted == [f"    err-{i}" for i in range(6, 16)]  # stdout ignored when stderr has text


def test_failure_quotes_stdout_when_stderr_is_empty() -> None:
    with pytest.raises(StackError) as caught:
        tools.run(["sh", "-c", "printf 'one\\ntwo\\n\\n'; exit 4"])
    assert caught.value.message == "sh failed with exit code 4:\n    one\n    two"


def test_death_by_signal_is_a_failure_with_a_negative_code() -> None:
    with pytest.raises(StackError, match=r"^sh failed with exit code -9:"):
        tools.run(["sh", "-c", "kill -9 $$"])


def test_timeout_is_a_stack_error_and_the_program_is_killed(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(StackError) as caught:
        tools.run(["sh", "-c", f"echo $$ > {marker}; exec sleep 30"], timeout=1)
    assert time.monotonic() - started < 15
    assert caught.value.message == "sh did not finish in 1s"
    assert caught.value.__suppress_context__
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)


def _wait_for_pid(path: Path, timeout: float = 10) -> int:
    """The pid a child writes to `path` once it runs (written to a temp name, then renamed:
    never read half-written)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return int(path.read_text())


def test_timeout_kills_the_grandchildren_too(tmp_path: Path) -> None:
    """`sh -c 'sleep 37; echo'` forks: the sleep is a grandchild of ours, and must not
    outlive the timeout (nor hold the output pipes open until it ends)."""
    marker = tmp_path / "pid"
    script = f"sleep 37 & echo $! > {marker}.new; mv {marker}.new {marker}; wait; echo done"
    seen: dict[str, int] = {}

    def watch() -> None:  # the grandchild's pid, read while the command still runs
        seen["pid"] = _wait_for_pid(marker)
        seen["started"] = int(psutil.Process(seen["pid"]).create_time() * 1000)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    with pytest.raises(StackError) as caught:
        tools.run(["sh", "-c", script], timeout=2)
    watcher.join()
    assert "pid" in seen, "the grandchild never wrote its pid"
    assert time.monotonic() - started < 15  # not held until the sleep ends
    assert caught.value.message == "sh did not finish in 2s"
    grandchild = seen["pid"]
    deadline = time.monotonic() + 10
    while _alive(grandchild, seen["started"]) and time.monotonic() < deadline:
        time.sleep(0.02)  # killed; reaped by init shortly after
    assert not _alive(grandchild, seen["started"]), "the grandchild survived the timeout"


def test_a_descendant_in_a_session_of_its_own_is_killed_on_timeout(tmp_path: Path) -> None:
    """A descendant that left the command's process group (as Prefect's flow runs do) is
    killed too."""
    marker = tmp_path / "pid"
    child = (f"import os, time; os.setsid(); open('{marker}.new', 'w').write(str(os.getpid()));"
             f"os.rename('{marker}.new', '{marker}'); time.sleep(37)")
    script = f"{sys.executable} -c \"{child}\" & while [ ! -e {marker} ]; do sleep 0.01; done; wait"
    with pytest.raises(StackError, match=r"^sh did not finish in 3s$"):
        tools.run(["sh", "-c", script], timeout=3)
    pid = int(marker.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid, None) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid, None)


def _alive(pid: int, started_ms: int | None) -> bool:
    try:
        proc = psutil.Process(pid)
        if started_ms is not None and int(proc.create_time() * 1000) != started_ms:
            return False  # the pid was reused
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(("timeout", "shown"), [(0.2, "0.2"), (1.5, "1.5")])
def test_the_timeout_message_keeps_fractions_of_a_second(timeout: float, shown: str) -> None:
    with pytest.raises(StackError) as caught:
        tools.run(["sleep", "30"], timeout=timeout)
    assert caught.value.message == f"sleep did not finish in {shown}s"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_run_as_another_user_drops_root_and_its_groups() -> None:
    nobody = pwd.getpwnam("nobody")
    out = tools.run(["sh", "-c", "id -u; id -g; id -G"], user="nobody").stdout
    uid, gid, groups = out.splitlines()
    assert int(uid) == nobody.pw_uid and int(gid) == nobody.pw_gid
    assert groups.split() == [str(nobody.pw_gid)]  # no supplementary group of root's kept


# -- the supervised and foreground siblings ---------------------------------------------------


def test_spawn_of_a_missing_program_is_a_stack_error(tmp_path: Path) -> None:
    with open(tmp_path / "log", "wb") as log, pytest.raises(StackError) as caught:
        tools.spawn(["prefectstack-no-such-program"], env=PATH, log=log, cwd=tmp_path)
    assert caught.value.message == "program not found: prefectstack-no-such-program"


def test_spawn_runs_in_its_own_session_logging_both_streams(tmp_path: Path) -> None:
    with open(tmp_path / "log", "wb") as log:
        proc = tools.spawn(["sh", "-c", "echo out; echo err >&2; exit 5"], env=PATH, log=log,
                           cwd=tmp_path)
    deadline = time.monotonic() + 10
    while (code := proc.poll()) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert code == 5
    assert (tmp_path / "log").read_text().splitlines() == ["out", "err"]
    assert proc.pid != os.getpgrp()


def test_run_foreground_returns_the_exit_code() -> None:
    assert tools.run_foreground(["sh", "-c", "exit 7"], env=PATH) == 7
    assert tools.run_foreground(["true"], env=PATH) == 0


def test_run_foreground_restores_the_signal_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    tools.run_foreground(["true"], env=PATH)
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_foreground_of_a_missing_program_is_a_stack_error() -> None:
    with pytest.raises(StackError, match=r"^program not found: prefectstack-no-such-program$"):
        tools.run_foreground(["prefectstack-no-such-program"], env=PATH)


def test_kill_group_of_a_process_that_is_gone_is_quiet() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    tools.kill_group(child.pid)  # stale-state cleanup: no error for a pid already gone


def test_kill_group_stops_the_whole_group() -> None:
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              start_new_session=True)
    try:
        tools.kill_group(leader.pid, signal.SIGTERM)
        assert leader.wait(timeout=10) == -signal.SIGTERM
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()
