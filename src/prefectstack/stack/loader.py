"""Read a stack file: YAML → `${ENV}` interpolation → validated, frozen `Stack`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from prefectstack import accounts
from prefectstack.errors import StackError
from prefectstack.stack.explain import explain
from prefectstack.stack.interpolate import interpolate
from prefectstack.stack.model import CURRENT_VERSION, Stack
from prefectstack.stack.reader import load_yaml, read_text

DEFAULT_FILE = "stack.yaml"
DEFAULT_STATE_DIR = ".prefectstack"
# Where root keeps a stack's state when the default place is out of reach of the account
# that runs PostgreSQL and the edge (e.g. a stack file in root's 0700 home), as system
# services do. A state_dir set to anything else is used as given (and refused if blocked).
SYSTEM_STATE_ROOT = Path("/var/lib/prefectstack")


def resolve_state_dir(base_dir: Path, state_dir: str, name: str, os_user: str) -> Path:
    """The state dir of a stack: `state_dir` relative to the stack file's directory; run as
    root with the default `.prefectstack` that `os_user` can't reach, /var/lib/prefectstack/
    <name> instead (prefectstack changes no permission outside its state dir)."""
    local = (base_dir / state_dir).resolve()
    if state_dir.rstrip("/") != DEFAULT_STATE_DIR or os.geteuid() != 0:
        return local
    if (local / "state.json").exists() or accounts.blocking_dir(local, os_user) is None:
        return local  # reachable, or a stack that already lives here
    return SYSTEM_STATE_ROOT / name


@dataclass(frozen=True)
class LoadedStack:
    """A validated stack plus where it came from (relative paths resolve against `base_dir`)."""

    stack: Stack
    base_dir: Path
    source: str

    @property
    def state_dir(self) -> Path:
        return resolve_state_dir(self.base_dir, self.stack.state_dir, self.stack.name,
                                 self.stack.postgres.os_user)


def parse_stack(text: str, env: Mapping[str, str], source: str = "stack.yaml") -> Stack:
    """Pure: text and an environment in, a validated `Stack` out, or one `StackError`."""
    data = load_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StackError(
            f"{source}: the top level must be a mapping of keys, got {type(data).__name__}",
            exit_code=2,
        )
    if "version" not in data:
        raise StackError(
            f"{source}: version: required field is missing",
            hint=f"add `version: {CURRENT_VERSION}` as the first line",
            exit_code=2,
        )
    if type(data["version"]) is not int or data["version"] != CURRENT_VERSION:
        raise StackError(
            f"{source}: version: {data['version']!r} is not supported",
            hint=f"this prefectstack reads version {CURRENT_VERSION}",
            exit_code=2,
        )
    try:
        data = interpolate(data, env)
    except StackError as exc:
        raise StackError(f"{source}: {exc.message}", hint=exc.hint, exit_code=2) from None
    try:
        return Stack.model_validate(data)
    except ValidationError as exc:
        lines = explain(Stack, exc)
        raise StackError(
            f"{source}: invalid stack file\n  " + "\n  ".join(lines), exit_code=2
        ) from None


def default_stack_text() -> str:
    return resources.files("prefectstack").joinpath("examples/default.yaml").read_text()


def default_stack(base_dir: Path) -> LoadedStack:
    stack = parse_stack(default_stack_text(), os.environ, "(built-in default stack)")
    return LoadedStack(stack, base_dir, "(built-in default stack)")


def load_stack(path: str | Path | None) -> LoadedStack:
    """Load `path`, or ./stack.yaml if present, or the built-in default stack."""
    if path is None:
        candidate = Path.cwd() / DEFAULT_FILE
        if not candidate.exists():
            return default_stack(Path.cwd())
        path = candidate
    file = Path(path)
    stack = parse_stack(read_text(file), os.environ, str(file))
    return LoadedStack(stack, file.resolve().parent, str(file))


def locate_state_dir(path: str | Path | None) -> Path:
    """Only where a stack keeps its state, for commands that act on a stack already running
    (`down`, `status`, `logs`, `audit`): they must work even when the file no longer
    validates or a variable it uses is unset, or a stack could not be stopped any more."""
    if path is None and not (Path.cwd() / DEFAULT_FILE).exists():
        return default_stack(Path.cwd()).state_dir
    file = Path(path) if path is not None else Path.cwd() / DEFAULT_FILE
    # The same bounds as `load_stack` (size, UTF-8, aliases, depth), but duplicate keys pass.
    data = load_yaml(read_text(file), str(file), unique_keys=False)
    data = data if isinstance(data, dict) else {}
    raw = data.get("state_dir", DEFAULT_STATE_DIR)
    try:
        state_dir = str(interpolate(str(raw), os.environ, ("state_dir",)))
        name = str(interpolate(str(data.get("name", "prefectstack")), os.environ, ("name",)))
    except StackError as exc:
        raise StackError(f"{file}: {exc.message}", hint=exc.hint, exit_code=2) from None
    postgres = data.get("postgres")
    os_user = str(postgres.get("os_user", "prefectstack")) if isinstance(postgres, dict) else (
        "prefectstack")
    return resolve_state_dir(file.resolve().parent, state_dir, name, os_user)
