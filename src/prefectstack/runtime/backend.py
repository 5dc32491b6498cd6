"""Which backend started a stack, recorded in its state dir.

`up` writes the record; `down`, `status` and `logs` read it, so they act on what actually
runs (supervised processes on this host, or a Docker Compose project) without being told
again; `down` removes it once the stack is stopped. No record means the local backend:
nothing was started yet, or the stack was started before backends were recorded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from prefectstack.errors import StackError
from prefectstack.layout import Layout
from prefectstack.runtime.files import write_atomic

LOCAL = "local"
COMPOSE = "compose"
NAMES = (LOCAL, COMPOSE)
_TITLES = {LOCAL: "the local backend", COMPOSE: "Docker Compose"}


@dataclass(frozen=True)
class Record:
    """`backend` started the stack `stack`, whose UI is at `ui_url` (for `status`, which must
    work without loading the stack file)."""

    backend: str
    stack: str = ""
    ui_url: str = ""


def write(state_dir: Path, record: Record) -> None:
    path = Layout(state_dir).backend_file
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(record), indent=2, sort_keys=True) + "\n", 0o644)


def read(state_dir: Path) -> Record:
    path = Layout(state_dir).backend_file
    try:
        record = Record(**json.loads(path.read_text()))
    except FileNotFoundError:
        return Record(LOCAL)
    except OSError as exc:
        raise StackError(f"cannot read {path}: {exc.strerror}",
                         hint="check that the state dir is a directory you can read") from None
    except (ValueError, TypeError) as exc:
        raise StackError(f"cannot read {path}: {exc}",
                         hint=f"it names the backend that started the stack, one of "
                              f"{', '.join(NAMES)}; fix it by hand or delete it") from None
    if record.backend not in NAMES:
        raise StackError(f"{path}: unknown backend {record.backend!r}",
                         hint=f"expected one of {', '.join(NAMES)}")
    return record


def clear(state_dir: Path) -> None:
    Layout(state_dir).backend_file.unlink(missing_ok=True)


def check_can_start(state_dir: Path, wanted: str) -> None:
    """Refuse to start a stack with one backend while another runs it (or the record says
    another started it and it was not stopped): they would share ports, and `down` would
    stop only one of them. Starting again with the same backend is that backend's business
    (the local one refuses; Compose updates its project in place)."""
    current = read(state_dir).backend
    if current == LOCAL and wanted != LOCAL:
        from prefectstack.runtime import state  # psutil: only `up` needs it

        if state.supervisor_alive(state_dir):
            raise StackError(f"the stack in {state_dir} already runs with {_TITLES[LOCAL]}",
                             hint="stop it first: prefectstack down")
    elif current != wanted:
        raise StackError(f"the stack in {state_dir} was started with {_TITLES[current]}",
                         hint="stop it first: prefectstack down")
