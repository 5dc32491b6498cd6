"""What an unprivileged account can reach, on real directories with real modes and a real
account (`nobody`), and the linked copies that replace a permission change."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefectstack.runtime import reach

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set up modes")
USER = "nobody"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A temporary dir others may search, directly in /tmp (pytest's own are 0700 inside a
    0700 directory, which would block every path below them)."""
    path = Path(tempfile.mkdtemp(prefix="prefectstack-reach-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def tree(tmp_path: Path, mode: int) -> Path:
    """tmp_path/open/gate/inner/file, with the gate dir at `mode`."""
    (tmp_path / "open").mkdir(mode=0o755)
    gate = tmp_path / "open" / "gate"
    gate.mkdir()
    gate.chmod(mode)
    inner = gate / "inner"
    inner.mkdir(mode=0o755)
    (inner / "file").write_text("x")
    return inner / "file"


def test_a_searchable_path_is_reachable(tmp_path: Path) -> None:
    target = tree(tmp_path, 0o711)
    assert reach.blocking_dir(target, USER) is None


def test_the_first_blocking_directory_is_named(tmp_path: Path) -> None:
    target = tree(tmp_path, 0o700)
    assert reach.blocking_dir(target, USER) == tmp_path / "open" / "gate"
    assert not reach.can_execute(target, USER)
    assert reach.blocking_dir(target, "root") is None


def test_group_and_owner_bits_count_for_their_own_account(tmp_path: Path) -> None:
    target = tree(tmp_path, 0o700)
    gate = tmp_path / "open" / "gate"
    os.chown(gate, pwd.getpwnam(USER).pw_uid, 0)
    assert reach.blocking_dir(target, USER) is None  # the owner's x bit


def test_a_linked_copy_is_reachable_and_reused_until_the_source_changes(tmp_path: Path) -> None:
    target = tree(tmp_path, 0o700)
    source = target.parent  # inner/, behind the 0700 gate
    dest = tmp_path / "open" / "state" / "runtime" / "inner"
    (tmp_path / "open" / "state").mkdir(mode=0o711)
    copy = reach.linked_copy(source, dest)
    assert (copy / "file").read_text() == "x"
    assert reach.blocking_dir(copy / "file", USER) is None
    assert reach.linked_copy(source, dest) == copy
    inode = (copy / "file").stat().st_ino
    assert inode == target.stat().st_ino  # a hard link, on the same filesystem
    (source / "file").write_text("changed in place")  # same inode: the link sees it
    new = source.parent / "inner2"
    new.mkdir()
    (new / "file").write_text("y")
    assert (reach.linked_copy(new, dest) / "file").read_text() == "y"  # another source
    # Nothing on the way to the source changed mode.
    assert (tmp_path / "open" / "gate").stat().st_mode & 0o777 == 0o700


def test_a_plain_copy_is_refreshed_every_time(tmp_path: Path) -> None:
    source = tmp_path / "flows"
    source.mkdir()
    (source / "a.py").write_text("1")
    dest = tmp_path / "copy"
    reach.refresh_copy(source, dest)
    (source / "a.py").write_text("2")
    assert (reach.refresh_copy(source, dest) / "a.py").read_text() == "2"
