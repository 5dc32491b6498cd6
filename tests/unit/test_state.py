"""The run state file and the supervisor lock that `status` and `down` read from another
shell. Real files, real processes and real flocks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from prefectstack.runtime import files, state

FILE = "state.json"


def _state() -> state.StackState:
    me = psutil.Process()
    services = [
        state.ServiceState(name="postgres", kind="service", state="ready", pid=me.pid,
                           pid_started=me.create_time(), started_at=1.5, restarts=2,
                           healthy=True, ports=[5432], probe="tcp 127.0.0.1:5432"),
        state.ServiceState(name="migrate", kind="oneshot", state="completed", last_exit=0),
    ]
    return state.StackState(
        stack="demo", source="/srv/stack.yaml", supervisor_pid=me.pid,
        supervisor_started=me.create_time(), phase="ready", message="all good",
        ui_url="https://localhost:8443", services=services,
    )


# -- the state file ---------------------------------------------------------------------------


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    written = _state()
    state.write(tmp_path, written)
    assert state.read(tmp_path) == written
    assert not (tmp_path / (FILE + ".tmp")).exists()  # replaced atomically
    data = json.loads((tmp_path / FILE).read_text())  # what other tools read
    assert data["phase"] == "ready" and data["services"][0]["ports"] == [5432]


def test_write_replaces_the_previous_state(tmp_path: Path) -> None:
    state.write(tmp_path, _state())
    state.write(tmp_path, replace(_state(), phase="stopping", services=[]))
    again = state.read(tmp_path)
    assert again is not None and again.phase == "stopping" and again.services == []


def test_defaults_survive_a_round_trip(tmp_path: Path) -> None:
    bare = state.StackState(stack="s", source="f", supervisor_pid=1, supervisor_started=0.0,
                            phase="starting",
                            services=[state.ServiceState(name="a", kind="service",
                                                         state="pending")])
    state.write(tmp_path, bare)
    assert state.read(tmp_path) == bare


def test_read_without_a_file_is_none(tmp_path: Path) -> None:
    assert state.read(tmp_path) is None


@pytest.mark.parametrize("text", [
    "",                                   # created, never written
    '{"stack": "demo", "sour',            # cut short
    "not json",
    '{"stack": "demo"}',                  # required fields missing
    '{"stack": "demo", "unknown_field": 1}',
    json.dumps({**json.loads(_state().to_json()), "services": [{"name": "x"}]}),
    json.dumps({**json.loads(_state().to_json()), "services": [{"bogus": 1}]}),
], ids=["empty", "cut-short", "not-json", "fields-missing", "unknown-field",
        "service-incomplete", "service-foreign"])  # stable ids: pytest-xdist compares them
def test_a_corrupt_or_foreign_file_reads_as_none(tmp_path: Path, text: str) -> None:
    (tmp_path / FILE).write_text(text)
    assert state.read(tmp_path) is None


@pytest.mark.parametrize("content", [
    b"[]", b"null", b'"s"', b"1",                              # valid JSON, not an object
    b"\xff\xfe garbage", b'{"stack": "\xe9"}',                 # not UTF-8
    json.dumps({**json.loads(_state().to_json()), "services": 3}).encode(),
    json.dumps({**json.loads(_state().to_json()), "services": ["x"]}).encode(),
], ids=["list", "null", "string", "number", "garbage", "latin-1", "services-number",
        "services-strings"])  # stable ids: pytest-xdist compares them
def test_any_unreadable_content_reads_as_none(tmp_path: Path, content: bytes) -> None:
    (tmp_path / FILE).write_bytes(content)
    assert state.read(tmp_path) is None


def test_write_leaves_no_temporary_file_and_ignores_a_leftover(tmp_path: Path) -> None:
    leftover = tmp_path / (FILE + ".tmp")
    leftover.write_text("from a crash")
    state.write(tmp_path, _state())
    state.write(tmp_path, _state())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([FILE, leftover.name])
    assert leftover.read_text() == "from a crash"  # a unique name each time: never reused
    assert state.read(tmp_path) == _state()


def test_the_state_file_is_readable_by_others(tmp_path: Path) -> None:
    state.write(tmp_path, _state())  # no secrets in it: `status` from another account
    assert (tmp_path / FILE).stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    state.write(tmp_path, _state())

    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        state.write(tmp_path, replace(_state(), phase="stopping"))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE]
    assert state.read(tmp_path) == _state()


def test_remove_deletes_the_file_and_tolerates_its_absence(tmp_path: Path) -> None:
    state.write(tmp_path, _state())
    state.remove(tmp_path)
    assert not (tmp_path / FILE).exists()
    assert state.read(tmp_path) is None
    state.remove(tmp_path)  # twice: no error


# -- same_process -----------------------------------------------------------------------------


def test_same_process_own_pid() -> None:
    me = psutil.Process()
    assert state.same_process(me.pid, me.create_time())
    assert state.same_process(me.pid, None)  # no start time recorded: the pid alone


def test_same_process_with_a_wrong_start_time_is_a_reused_pid() -> None:
    me = psutil.Process()
    assert not state.same_process(me.pid, me.create_time() - 5)
    assert not state.same_process(me.pid, me.create_time() + 5)


@pytest.mark.parametrize("pid", [None, 0])
def test_same_process_without_a_pid(pid: int | None) -> None:
    assert not state.same_process(pid, None)


def test_same_process_dead_pid() -> None:
    child = subprocess.Popen(["true"])
    started = psutil.Process(child.pid).create_time()
    child.wait()  # exited and reaped
    assert not state.same_process(child.pid, started)
    assert not state.same_process(child.pid, None)


def test_same_process_zombie() -> None:
    child = subprocess.Popen(["true"])
    started = psutil.Process(child.pid).create_time()
    proc = psutil.Process(child.pid)
    try:
        deadline = time.monotonic() + 10
        while proc.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped
        assert not state.same_process(child.pid, started)
    finally:
        child.wait()


# -- the supervisor lock ----------------------------------------------------------------------


def test_lock_is_exclusive_between_two_holders(tmp_path: Path) -> None:
    first, second = state.SupervisorLock(tmp_path), state.SupervisorLock(tmp_path)
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        assert state.supervisor_alive(tmp_path)
        first.release()
        assert second.try_acquire()  # free again once released
        assert state.supervisor_alive(tmp_path)
    finally:
        second.release()
    assert not state.supervisor_alive(tmp_path)


def test_supervisor_alive_without_any_holder(tmp_path: Path) -> None:
    state_dir = tmp_path / "new"
    assert not state.supervisor_alive(state_dir)  # creates the dir and lock file, holds nothing
    assert state_dir.is_dir()
    lock = state.SupervisorLock(state_dir)
    try:
        assert lock.try_acquire(), "supervisor_alive must not leave the lock held"
    finally:
        lock.release()


HOLD = """\
import sys
from pathlib import Path
from prefectstack.runtime import state
lock = state.SupervisorLock(Path(sys.argv[1]))
assert lock.try_acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_lock_held_by_another_process_and_freed_when_it_dies(tmp_path: Path) -> None:
    """What `status` sees from another shell: alive while the supervisor holds the lock,
    not alive once it is gone, even killed without releasing."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert state.supervisor_alive(tmp_path)
        mine = state.SupervisorLock(tmp_path)
        try:
            assert not mine.try_acquire()
        finally:
            mine.release()
    finally:
        holder.kill()
        holder.wait()
    assert not state.supervisor_alive(tmp_path)
    assert (tmp_path / "supervisor.lock").exists()


def test_a_state_file_without_the_newer_fields_reads_with_their_defaults(
    tmp_path: Path,
) -> None:
    """A supervisor of the previous version wrote no stop signal: cleanup still works."""
    (tmp_path / FILE).write_text(json.dumps({
        "stack": "s", "source": "x", "supervisor_pid": 1, "supervisor_started": 1.0,
        "phase": "ready", "services": [{"name": "postgres", "kind": "daemon", "state": "ready"}],
    }))
    read = state.read(tmp_path)
    assert read is not None
    assert (read.services[0].stop_signal, read.services[0].essential) == ("SIGTERM", True)
