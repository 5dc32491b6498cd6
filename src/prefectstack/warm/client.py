"""The worker's side of the forkserver: start it, ask it for children, learn their exit.

One reader thread per forkserver turns its messages into results on the asyncio loop that
asked. If the forkserver dies, its children die with it (PR_SET_PDEATHSIG): every run it
held is reported exited by SIGKILL (Prefect proposes Crashed), and the next spawn starts a
new forkserver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefectstack.warm import protocol

logger = logging.getLogger("prefectstack.warm")
REPLY_BUFFER = 65536  # the forkserver's replies are a few dozen bytes


class ForkServerGone(RuntimeError):
    """The forkserver died before it answered."""


@dataclass
class WarmChild:
    """A forked flow-run process, shaped like `subprocess.Popen` for Prefect's ProcessHandle:
    `pid`, and `returncode` once the forkserver reports its exit."""

    pid: int
    returncode: int | None = None
    _exited: asyncio.Future[int] | None = field(default=None, repr=False)

    async def wait(self) -> int:
        assert self._exited is not None
        self.returncode = await asyncio.shield(self._exited)
        return self.returncode


@dataclass
class _Pending:
    loop: asyncio.AbstractEventLoop
    started: asyncio.Future[int]
    exited: asyncio.Future[int]
    pid: int | None = None


class _Connection:
    """One forkserver process and its socket."""

    def __init__(self, preload: Sequence[str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "prefectstack.warm.forkserver", "--fd", str(theirs.fileno())]
        for module in preload:
            argv += ["--preload", module]
        self.process = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self.sock = ours
        self.pending: dict[str, _Pending] = {}
        self.lock = threading.Lock()
        self.alive = True
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, name="forkserver-reader", daemon=True)
        self.thread.start()

    def send(self, message: Mapping[str, Any], fds: Sequence[int]) -> None:
        socket.send_fds(self.sock, [protocol.encode(message)], list(fds))

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(REPLY_BUFFER)
            except OSError:
                data = b""
            if not data:
                break
            try:
                self._dispatch(protocol.decode(data))
            except protocol.ProtocolError as exc:
                logger.error("forkserver sent a bad message: %s", exc)
        self._lost()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["op"] == "ready":
            self.ready.set()
            return
        with self.lock:
            pending = self.pending.get(message["id"])
            if pending is None:
                return
            if message["op"] == "started":
                pending.pid = message["pid"]
                _resolve(pending, pending.started, message["pid"])
            elif message["op"] == "failed":
                self.pending.pop(message["id"], None)
                _fail(pending, pending.started, RuntimeError(message["error"]))
            elif message["op"] == "exited":
                self.pending.pop(message["id"], None)
                _resolve(pending, pending.exited, message["returncode"])

    def _lost(self) -> None:
        """The forkserver is gone: its children were killed with it (or are being)."""
        with self.lock:
            self.alive = False
            pending, self.pending = self.pending, {}
        self.ready.set()
        code = self.process.wait()
        if pending:
            logger.error(
                "forkserver %s exited (%s) holding %d flow run(s); they are reported killed",
                self.process.pid, code, len(pending),
            )
        for item in pending.values():
            if item.pid is not None:
                try:  # PR_SET_PDEATHSIG already did this on Linux
                    os.killpg(item.pid, signal.SIGKILL)
                except OSError:
                    pass
                _resolve(item, item.exited, -signal.SIGKILL)
            else:
                _fail(item, item.started, ForkServerGone("the forkserver exited"))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _resolve(item: _Pending, future: asyncio.Future[int], value: int) -> None:
    def set_result() -> None:
        if not future.done():
            future.set_result(value)

    item.loop.call_soon_threadsafe(set_result)


def _fail(item: _Pending, future: asyncio.Future[int], exc: BaseException) -> None:
    def set_exception() -> None:
        if not future.done():
            future.set_exception(exc)

    item.loop.call_soon_threadsafe(set_exception)


class ForkServer:
    """Starts the forkserver on first use, and again after it dies."""

    def __init__(self, preload: Sequence[str] = ()) -> None:
        self.preload = tuple(preload)
        self._conn: _Connection | None = None
        self._lock = threading.Lock()
        self.starts = 0

    def _connection(self) -> _Connection:
        with self._lock:
            if self._conn is None or not self._conn.alive:
                if self._conn is not None:
                    logger.warning("forkserver exited; starting a new one")
                self._conn = _Connection(self.preload)
                self.starts += 1
            return self._conn

    @property
    def pid(self) -> int | None:
        return self._conn.process.pid if self._conn is not None and self._conn.alive else None

    async def start(self) -> None:
        """Start the forkserver now and wait until it has imported everything."""
        conn = self._connection()
        await asyncio.get_running_loop().run_in_executor(None, conn.ready.wait)

    async def spawn(
        self, run_id: str, args: Sequence[str], env: Mapping[str, str], cwd: str | None,
        stdout: int, stderr: int,
    ) -> WarmChild:
        loop = asyncio.get_running_loop()
        conn = self._connection()
        item = _Pending(loop, loop.create_future(), loop.create_future())
        with conn.lock:
            if not conn.alive:
                raise ForkServerGone("the forkserver exited")
            conn.pending[run_id] = item
        message = {"op": "spawn", "id": run_id, "args": list(args), "env": dict(env), "cwd": cwd}
        try:
            conn.send(message, (stdout, stderr))
        except OSError as exc:
            with conn.lock:
                conn.pending.pop(run_id, None)
            raise ForkServerGone(f"cannot reach the forkserver: {exc}") from exc
        pid = await item.started
        return WarmChild(pid=pid, _exited=item.exited)

    def close(self) -> None:
        """Hang up: the forkserver exits once its children have."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
