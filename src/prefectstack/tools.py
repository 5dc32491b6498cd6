"""The one place that runs external programs: short commands and supervised processes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

from prefectstack.errors import StackError


def _as_user(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """uid, gid and supplementary groups: keeping root's gid would make group permission
    bits (e.g. /root's 0700) apply instead of the `other` bits we rely on."""
    if user is None:
        return None, None, None
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid, []


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    timeout: float = 120.0,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion; failure raises StackError quoting its output.

    The command runs in a session of its own, so that a timeout (or our own interruption)
    kills everything it started, not only the program itself: a surviving grandchild
    would keep running and hold the output pipes open."""
    uid, gid, groups = _as_user(user)
    try:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            user=uid,
            group=gid,
            extra_groups=groups,
            stdin=subprocess.PIPE if input_text is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise StackError(f"program not found: {argv[0]}") from None
    except PermissionError:
        raise StackError(
            f"permission denied running {argv[0]}" + (f" as {user}" if user else "")
        ) from None
    with popen:
        try:
            stdout, stderr = popen.communicate(input_text, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(popen)
            raise StackError(f"{Path(argv[0]).name} did not finish in {timeout:g}s") from None
        except BaseException:  # e.g. Ctrl-C: it reaches only us, not the command's session
            _kill_tree(popen)
            raise
    result = subprocess.CompletedProcess(list(argv), popen.returncode, stdout, stderr)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-10:]
        raise StackError(
            f"{Path(argv[0]).name} failed with exit code {result.returncode}:\n    "
            + "\n    ".join(tail)
        )
    return result


def _kill_tree(popen: subprocess.Popen[str]) -> None:
    """SIGKILL a command run by `run`: its process group, and any descendant that left the
    group for a session of its own; then reap it."""
    family = _descendants(popen.pid)  # before the kill, while they are still its children
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    for pid, started in family.items():
        if _same(pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    popen.kill()
    try:
        popen.communicate(timeout=5)  # reap it and drain the pipes
    except subprocess.TimeoutExpired:
        pass  # a process we could not kill holds the pipes: leaving closes them and waits


class Process:
    """A supervised child in its own session, so signals reach its whole process group
    (a worker's flow-run subprocesses included) and a Ctrl-C in the terminal reaches only us."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        # Descendants seen when we signalled it (pid -> start time, to tell a reused pid).
        self._family: dict[int, float] = {}

    def poll(self) -> int | None:
        """The exit code once the process AND every descendant we signalled are gone: a
        service is not stopped while a flow run it started still runs."""
        code = self._popen.poll()
        if code is None or self._family_alive():
            return None
        return code

    def send(self, sig: int) -> None:
        # Prefect starts flow runs in sessions of their own (so a group-wide signal cannot
        # race the worker): signal every descendant too, or `down` leaves them running. A
        # flow run that gets SIGTERM reports itself Crashed instead of staying Running; one
        # that does not end gets the supervisor's SIGKILL after the grace period, even when
        # the worker itself has exited and the run was re-parented away from it.
        self._family |= _descendants(self.pid)
        for child, started in self._family.items():
            if _same(child, started):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, sig)
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(self.pid, sig)


    def _family_alive(self) -> bool:
        return any(_same(pid, started) for pid, started in self._family.items())


def _descendants(pid: int) -> dict[int, float]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return {}
    found = {}
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            found[child.pid] = child.create_time()
    return found


def _same(pid: int, started: float) -> bool:
    """The process we saw is still running (not a zombie, not a new process on its pid)."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: IO[bytes],
    cwd: Path,
    user: str | None = None,
    death_signal: int = signal.SIGKILL,
) -> Process:
    """Start a supervised service in a session of its own that gets `death_signal` when we
    die, even of SIGKILL: a supervisor that is killed leaves no orphan behind.

    The kernel sends it when the *thread* that forked exits, so call this from the thread
    that lives as long as the service (the supervisor's main thread)."""
    uid, gid, groups = _as_user(user)
    try:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            user=uid,
            group=gid,
            extra_groups=groups,
            start_new_session=True,
            preexec_fn=_chain(die_with_parent(death_signal), _default_sigint()),
        )
    except FileNotFoundError:
        raise StackError(f"program not found: {argv[0]}") from None
    except PermissionError:
        raise StackError(
            f"permission denied running {argv[0]}" + (f" as {user}" if user else "")
        ) from None
    return Process(popen)


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A pre-exec hook that asks the kernel for `sig` when our forking thread exits (Linux).

    Popen runs it after it has changed user: a change of credentials clears the setting, a
    plain exec keeps it (only a set-user-ID exec resets it, and our programs are not)."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        # The signal would fire when this (shorter-lived) thread ends, not when we die.
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # we died between fork and prctl: nobody will signal it
            os._exit(1)  # not os.kill: our inherited Python handlers would only set a flag

    return hook


def _default_sigint() -> Callable[[], None] | None:
    """A pre-exec hook that gives the program SIGINT's default action back.

    An ignored signal stays ignored across exec, and we may run with SIGINT ignored (as a
    shell's background job, under nohup, in pytest-xdist's workers). Prefect's worker stops
    on SIGTERM by sending itself SIGINT: inheriting the ignore, it never stopped (seen:
    `worker join` hung after SIGTERM). Caught handlers are reset by exec anyway; this resets
    an ignore. libc's signal() is looked up here, before the fork."""
    if os.name != "posix":
        return None
    libc_signal = ctypes.CDLL(None, use_errno=True).signal
    libc_signal.restype = ctypes.c_void_p
    libc_signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
    sigint = int(signal.SIGINT)

    def hook() -> None:
        libc_signal(sigint, None)  # SIG_DFL

    return hook


def _chain(*hooks: Callable[[], None] | None) -> Callable[[], None] | None:
    present = [h for h in hooks if h is not None]
    if not present:
        return None

    def hook() -> None:
        for each in present:
            each()

    return hook


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process group we started earlier (stale-state cleanup)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def leftovers(pid: int | None, started: float | None) -> dict[int, float]:
    """What is left of a service started earlier by a supervisor that died: its leader (if
    `pid` is still that process), the leader's descendants, and the members of its process
    group, which outlive the leader (each service runs in a session of its own, so the
    group's id is the leader's pid). pid -> start time, to tell a reused pid apart.

    A pid that now runs another process means our group is gone: Linux does not reuse a
    pid while a process group of that id exists."""
    if not pid:
        return {}
    family: dict[int, float] = {}
    try:
        leader = psutil.Process(pid)
        if started is not None and abs(leader.create_time() - started) >= 1.0:
            return {}
        if leader.status() != psutil.STATUS_ZOMBIE:
            family[pid] = leader.create_time()
        family |= _descendants(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid not in family and os.getpgid(proc.pid) == pid:
                created = proc.create_time()
                if (started is None or created >= started - 1.0) and _same(proc.pid, created):
                    family[proc.pid] = created
                    family |= _descendants(proc.pid)
    return family


def stop_processes(
    family: dict[int, float], sig: int, grace: float, *, kill_grace: float = 5.0,
) -> dict[int, float]:
    """Send `sig` to each process, wait up to `grace` seconds for all of them to exit, then
    SIGKILL the rest and wait again. Returns those still running after all that (none,
    unless a process is stuck in the kernel). A zombie counts as gone: its parent (possibly
    an init that never reaps) holds nothing of ours."""
    _signal_all(family, sig)
    if _wait_gone(family, grace):
        return {}
    _signal_all(family, signal.SIGKILL)
    _wait_gone(family, kill_grace)
    return {p: t for p, t in family.items() if _same(p, t)}


def _signal_all(family: dict[int, float], sig: int) -> None:
    for pid, started in family.items():
        if _same(pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _wait_gone(family: dict[int, float], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if not any(_same(p, t) for p, t in family.items()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def spawn_detached(argv: Sequence[str], *, log: IO[bytes], cwd: Path) -> int:
    """Start a process that outlives us (the background supervisor)."""
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )
    return popen.pid


def run_foreground(argv: Sequence[str], *, env: Mapping[str, str]) -> int:
    """Run a long-lived program attached to our terminal until it exits; SIGINT, SIGTERM
    (and SIGHUP) sent to us are passed on to it once. Returns its exit code."""
    posix = os.name == "posix"
    try:
        # Its own session on POSIX, so a Ctrl-C reaches it once (through us), not twice.
        popen = subprocess.Popen(list(argv), env=dict(env), start_new_session=posix,
                                 preexec_fn=_default_sigint())
    except FileNotFoundError:
        raise StackError(f"program not found: {argv[0]}") from None

    def forward(signum: int, _frame: object) -> None:
        if popen.poll() is None:
            popen.send_signal(signum)

    # On Windows the console delivers Ctrl-C to the child itself; we only wait for it.
    handler = forward if posix else signal.SIG_IGN
    names = ("SIGINT", "SIGTERM", "SIGHUP") if posix else ("SIGINT",)
    sigs = [getattr(signal, n) for n in names]
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        return popen.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
