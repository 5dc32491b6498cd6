"""Messages between the warm worker and its forkserver, and the pure parts of a child's set-up.

The two talk over a `SOCK_SEQPACKET` unix socket pair: each message is one datagram holding
one JSON object (so the kernel keeps the boundaries), and a `spawn` request carries the
child's stdout and stderr as file descriptors (SCM_RIGHTS).

worker -> forkserver: `{"op": "spawn", "id", "args", "env", "cwd"}` + 2 fds.
forkserver -> worker: `{"op": "ready", "pid"}` once; then per spawn `{"op": "started", "id",
"pid"}` or `{"op": "failed", "id", "error"}`, and later `{"op": "exited", "id", "pid",
"returncode"}`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

MAX_MESSAGE = 1 << 20  # an environment of a few hundred variables fits many times over
OPS = {"spawn", "ready", "started", "failed", "exited"}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "spawn": ("id", "args", "env", "cwd"),
    "ready": ("pid",),
    "started": ("id", "pid"),
    "failed": ("id", "error"),
    "exited": ("id", "pid", "returncode"),
}


class ProtocolError(ValueError):
    """A message that is not one of the protocol's."""


def encode(message: Mapping[str, Any]) -> bytes:
    check(message)
    data = json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    check(message)
    return message


def check(message: Mapping[str, Any]) -> None:
    op = message.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}")
    missing = [k for k in _REQUIRED[op] if k not in message]
    if missing:
        raise ProtocolError(f"{op} message lacks {', '.join(missing)}")
    if op == "spawn":
        env = message["env"]
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ProtocolError("spawn env must map strings to strings")
        args = message["args"]
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ProtocolError("spawn args must be a list of strings")
        if message["cwd"] is not None and not isinstance(message["cwd"], str):
            raise ProtocolError("spawn cwd must be a string or null")


def returncode(wait_status: int) -> int:
    """`os.waitpid`'s status as `subprocess` reports it: the exit code, or -signal."""
    return os.waitstatus_to_exitcode(wait_status)


def apply_environment(environ: dict[str, str], env: Mapping[str, str]) -> None:
    """Make `environ` (the child's `os.environ`) exactly `env`: the worker computed the whole
    environment of the run, as it would for `subprocess`, so nothing of the parent's stays."""
    for key in [k for k in environ if k not in env]:
        del environ[key]
    environ.update(env)


def child_sys_path(base: Sequence[str], cwd: str, env: Mapping[str, str]) -> list[str]:
    """The `sys.path` of `python -m ...` started in `cwd` with `env`: the working directory
    first, then `PYTHONPATH`, then the interpreter's own entries (`base`, the parent's
    `sys.path` without its own first entry)."""
    front = [cwd, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    out: list[str] = []
    for entry in [*front, *base]:
        if entry not in out:
            out.append(entry)
    return out
