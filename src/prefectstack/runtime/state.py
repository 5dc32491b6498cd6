"""The run state file: what `status` and `down` read from another shell."""

from __future__ import annotations

import fcntl
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from prefectstack.layout import LOCK_FILE, STATE_FILE
from prefectstack.runtime.files import write_atomic


@dataclass
class ServiceState:
    name: str
    kind: str
    state: str
    pid: int | None = None
    pid_started: float | None = None  # process create_time, to tell a reused pid apart
    started_at: float | None = None
    restarts: int = 0
    healthy: bool | None = None
    last_exit: int | None = None
    ports: list[int] = field(default_factory=list)
    probe: str = ""
    stop_signal: str = "SIGTERM"  # how a cleanup after a dead supervisor stops it cleanly
    essential: bool = True  # the stack fails with it (else only the unit is failed)


@dataclass
class StackState:
    stack: str
    source: str
    supervisor_pid: int
    supervisor_started: float
    phase: str  # starting | ready | stopping | stopped | failed
    message: str = ""
    ui_url: str = ""
    services: list[ServiceState] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackState:
        services = [ServiceState(**s) for s in data.get("services", [])]
        return cls(**{**data, "services": services})


def write(state_dir: Path, state: StackState) -> None:
    """Replace the state file atomically: a reader sees the old state or the new one. It
    holds no secret and stays readable by others, as a plain write left it."""
    write_atomic(state_dir / STATE_FILE, state.to_json(), 0o644)


def read(state_dir: Path) -> StackState | None:
    """The state, or None when there is none, or none we can read (an empty, cut-short or
    foreign file: whatever is not a state object reads as absent)."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:  # not UTF-8 (UnicodeDecodeError), not JSON (JSONDecodeError)
        return None
    if not isinstance(data, dict):
        return None
    try:
        return StackState.from_dict(data)
    except TypeError:  # fields missing or unknown, services not a list of objects
        return None


def remove(state_dir: Path) -> None:
    (state_dir / STATE_FILE).unlink(missing_ok=True)


def same_process(pid: int | None, started: float | None) -> bool:
    """True if `pid` is still the process we started (not a reused pid)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except psutil.Error:
        return False


class SupervisorLock:
    """An exclusive flock held for the supervisor's lifetime: if nobody holds it, any state
    file left behind belongs to a supervisor that crashed."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(state_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open on purpose

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def release(self) -> None:
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()


def supervisor_alive(state_dir: Path) -> bool:
    """Someone holds the lock (checked without taking it for long)."""
    lock = SupervisorLock(state_dir)
    if lock.try_acquire():
        lock.release()
        return False
    lock.release()
    return True
