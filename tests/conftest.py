"""Shared by every test layer."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SYSTEM_STATE_ROOT = Path("/var/lib/prefectstack")


@pytest.fixture(scope="session", autouse=True)
def searchable_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run as root, the stack's unprivileged account (PostgreSQL, the edge) must reach state
    dirs under pytest's temp dirs, which pytest makes 0700 (else prefectstack refuses them,
    or moves a default state dir to /var/lib/prefectstack). The test run, not prefectstack,
    opens its own dirs for search by others (never read). At the end, no test may have
    left state in /var/lib/prefectstack."""
    had_system_state = SYSTEM_STATE_ROOT.exists()
    if os.geteuid() == 0:
        _open_temp_dirs(tmp_path_factory)
    yield
    if not had_system_state and SYSTEM_STATE_ROOT.exists():
        raise AssertionError(f"a test left state in {SYSTEM_STATE_ROOT}: its temp dir was "
                             "out of reach of the stack's account")


def _open_temp_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    # pytest-of-<user>/pytest-N/, plus popen-gwK/ under pytest-xdist: every level pytest made
    # (above those, only what sits under the system's temp dir; the rest is not ours).
    system_tmp = Path(tempfile.gettempdir()).resolve()
    levels = [base, *(d for d in base.parents if system_tmp in d.parents)]
    for directory in reversed(levels):
        mode = directory.stat().st_mode
        if directory.stat().st_uid == os.geteuid() and not mode & 0o001:
            directory.chmod(mode | 0o001)
    make = tmp_path_factory.mktemp

    def mktemp(basename: str, numbered: bool = True) -> Path:
        path = make(basename, numbered)
        path.chmod(path.stat().st_mode | 0o001)
        return path

    tmp_path_factory.mktemp = mktemp  # type: ignore[method-assign]


# -- the order two test processes take modules in ------------------------------------------

# The modules that take longest (minutes on the 2-core machine, measured with --durations),
# started first: pytest-xdist hands whole modules (`--dist loadfile`) to whichever process
# is free, so with the long ones first and the many short ones last both processes finish
# at about the same time. scripts/test.sh passes --no-loadscope-reorder, or xdist would
# reorder modules by their number of tests.
LONG_MODULES = {
    "integration/test_promises.py": 9, "integration/test_promises_two_apis.py": 12,
    "integration/test_edge.py": 6, "integration/test_deploy.py": 5,
    "integration/test_reconcile.py": 6, "integration/test_platform.py": 5,
    "integration/test_flow_library.py": 4, "integration/test_backup.py": 3.5,
    "integration/test_attacks.py": 3, "integration/test_warm_worker.py": 3,
    "integration/test_flows_account.py": 2, "integration/test_attacks_audit.py": 2,
    "integration/test_external_postgres.py": 1.5, "unit/test_lint.py": 1,
    "integration/test_ports.py": 2.5,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest modules first; a module's tests keep their order (a stable sort)."""
    items.sort(key=lambda item: -LONG_MODULES.get(
        f"{item.path.parent.name}/{item.path.name}", 0))
