"""Where a stack's files live under its state dir: the one spelling of that layout.

Pure: paths are computed, never created. The runtime, the CLI and deploy all read it from
here, so that a file moves in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

SECRETS_FILE = "secrets.json"
STATE_FILE = "state.json"
LOCK_FILE = "supervisor.lock"
CA_EXPORT = "ca.crt"
AUDIT_FILE = "audit.log"
SUPERVISOR_LOG = "supervisor"
ADMIN_SHOWN_MARKER = ".admin-password-shown"
BACKEND_FILE = "backend.json"  # which backend started the stack (runtime/backend.py)
COMPOSE_DIR = "compose"  # the Docker Compose project `up --backend compose` renders and runs

# Volumes (data dirs) whose names other modules need.
AUTH_VOLUME = "auth"
EDGE_VOLUME = "edge"
# Caddy's storage layout: its internal CA's root certificate, relative to the edge volume.
EDGE_STORAGE = "data"
EDGE_CA_IN_VOLUME = PurePosixPath(EDGE_STORAGE, "pki/authorities/local/root.crt")


@dataclass(frozen=True)
class Layout:
    """A stack's state dir: `data/<volume>/`, `logs/<service>.log`, the secret store, the run
    state file and the supervisor's lock."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def volume(self, name: str) -> Path:
        return self.data / name

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    @property
    def secrets_file(self) -> Path:
        return self.root / SECRETS_FILE

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def auth_dir(self) -> Path:
        return self.volume(AUTH_VOLUME)

    @property
    def audit_file(self) -> Path:
        return self.auth_dir / AUDIT_FILE

    @property
    def edge_ca(self) -> Path:
        """The edge's internal CA certificate where Caddy keeps it (next to its key)."""
        return self.volume(EDGE_VOLUME) / EDGE_CA_IN_VOLUME

    @property
    def ca_export(self) -> Path:
        """The public copy of that certificate handed to clients."""
        return self.root / CA_EXPORT

    @property
    def runtime_dir(self) -> Path:
        """Programs linked here for an unprivileged account that can't reach where they
        are installed (see runtime/reach.py)."""
        return self.root / "runtime"

    @property
    def supervisor_log(self) -> Path:
        return self.log(SUPERVISOR_LOG)

    @property
    def admin_shown_marker(self) -> Path:
        return self.root / ADMIN_SHOWN_MARKER

    @property
    def backend_file(self) -> Path:
        return self.root / BACKEND_FILE

    @property
    def compose_dir(self) -> Path:
        return self.root / COMPOSE_DIR


# The service accounts of `kubernetes` pools (render/kubernetes_workers.py renders them,
# jobs/pools.py writes the flow runs' one into each pool's base job template): the workers'
# (creates the flow-run Jobs), and the flow-run pods' (no rights, no token).
def kubernetes_worker_account(namespace: str) -> str:
    return f"{namespace}-kubernetes-worker"


def flow_run_account(namespace: str) -> str:
    return f"{namespace}-flow-run"
