"""The forkserver: a long-lived parent that imports Prefect once and forks one child per
flow run (`python -m prefectstack.warm.forkserver --fd N [--preload MODULE ...]`).

The parent never starts a thread or an event loop (a fork copies only the forking thread,
and a loop's state does not survive one): it waits in `select` on its socket to the worker
and on a self-pipe woken by SIGCHLD, forks on request, reaps children and reports their
exit status (the worker is not their parent, so it cannot wait for them itself). When the
worker goes away (end of file on the socket) it waits for its children and exits; children
die with it if it is killed (PR_SET_PDEATHSIG), so none is left running unwatched: the
worker then reports them exited by SIGKILL, which Prefect records as Crashed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import threading
from typing import Any

from prefectstack.warm import child, heartbeat, protocol

# Imported before the first fork so that children start with them: what every flow run
# needs, a fresh interpreter's ~0.7 s of imports.
PRELOAD = (
    "prefect",
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.flows",
    "prefect.tasks",
    "prefect.client.orchestration",
    "prefect.logging.handlers",
    "prefect.runner._workspace_supervisor",
    "prefect.runner._workspace_resolver",
    "prefect.deployments.steps.core",
    "prefect.deployments.steps.pull",
    "prefect.results",
    "prefect.states",
    "prefect.context",
    "prefect.cli",
    "anyio",
    "anyio._backends._asyncio",  # imported by the first anyio.run, in every child otherwise
    "httpx",
    "pydantic.v1",  # Flow.validate_parameters checks every run's arguments against it
    "rich._emoji_codes",  # Prefect's console log handler's markup
)
PR_SET_PDEATHSIG = 1


def preload(modules: list[str]) -> None:
    for name in [*PRELOAD, *modules]:
        importlib.import_module(name)
    complete_models()
    heartbeat.install()
    if threading.active_count() != 1:  # a fork would copy a lock some thread holds
        names = [t.name for t in threading.enumerate()]
        raise SystemExit(f"forkserver: importing started threads: {names}")
    gc.collect()
    gc.freeze()  # keep the parent's objects out of the children's collections: shared pages


def complete_models() -> None:
    """Build the schemas of every pydantic model imported so far whose build pydantic put
    off (forward references): else each child builds those it uses (the API client's flow
    run, deployment and work pool models among them), ~4% of a run's CPU."""
    from pydantic import BaseModel

    todo: list[type[BaseModel]] = [BaseModel]
    seen: set[type[BaseModel]] = set()
    while todo:
        for cls in todo.pop().__subclasses__():
            if cls in seen:
                continue
            seen.add(cls)
            todo.append(cls)
            if not getattr(cls, "__pydantic_complete__", True):
                try:
                    cls.model_rebuild()
                except Exception:  # a model that can't be completed yet: the child tries
                    pass


def die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the child outlives a killed forkserver
        pass


class Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.children: dict[int, str] = {}  # pid -> flow run id
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.base_path = sys.path[1:]
        self.environ = dict(os.environ)  # what Prefect's settings were built from
        self.pid = os.getpid()

    def send(self, **message: Any) -> None:
        try:
            self.sock.send(protocol.encode(message))
        except OSError:  # the worker is gone; its children are reaped all the same
            pass

    def serve(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when runs end
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self.wake_r, selectors.EVENT_READ)
        self.send(op="ready", pid=self.pid)
        listening = True
        while listening or self.children:
            for key, _ in sel.select(timeout=5):
                if key.fileobj is self.sock:
                    listening = self.receive()
                    if not listening:
                        sel.unregister(self.sock)
            self.drain_wakeups()
            self.reap()

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def receive(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, protocol.MAX_MESSAGE, 4)
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            request = protocol.decode(data)
            if request["op"] != "spawn" or len(fds) != 2:
                raise protocol.ProtocolError("expected a spawn request with 2 fds")
        except protocol.ProtocolError as exc:
            print(f"forkserver: bad request: {exc}", file=sys.stderr, flush=True)
            for fd in fds:
                os.close(fd)
            return True
        try:
            self.spawn(request, fds)
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def spawn(self, request: dict[str, Any], fds: list[int]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            self.send(op="failed", id=request["id"], error=f"fork: {exc}")
            return
        if pid == 0:
            self.become_child(request, fds)  # never returns
        self.children[pid] = request["id"]
        self.send(op="started", id=request["id"], pid=pid)

    def become_child(self, request: dict[str, Any], fds: list[int]) -> None:
        code = 1
        try:
            os.setsid()  # its own process group, as Prefect isolates a run's group
            die_with_parent()
            if os.getppid() != self.pid:
                os._exit(1)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            gc.unfreeze()
            self.sock.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            protocol.apply_environment(os.environ, request["env"])  # type: ignore[arg-type]
            child.label_process(os.environ)
            if request["cwd"]:
                os.chdir(request["cwd"])
            code = child.supervise(request["args"][0], self.base_path, self.environ)
        except BaseException:  # the child must end here, whatever happens
            import traceback

            traceback.print_exc()
        child.finish(code)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run_id = self.children.pop(pid, None)
            if run_id is not None:
                self.send(op="exited", id=run_id, pid=pid, returncode=protocol.returncode(status))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prefectstack.warm.forkserver")
    parser.add_argument("--fd", type=int, required=True, help="the worker's socket")
    parser.add_argument("--preload", action="append", default=[], help="module to import")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    # Not tied to the worker's life: like the stock worker's children, runs in flight
    # finish if the worker is killed; the forkserver exits once they have.
    preload(args.preload)
    Server(sock).serve()


if __name__ == "__main__":
    main()
