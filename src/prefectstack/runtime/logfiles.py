"""Service log files: follow them (with a name prefix) and read their last lines."""

from __future__ import annotations

import os
from pathlib import Path

from prefectstack import console


class LogFollower:
    """Echo new lines of every service log to the console with a name prefix."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.offsets: dict[Path, int] = {
            p: p.stat().st_size for p in logs.glob("*.log")
        }

    def pump(self, only: set[str] | None = None) -> None:
        for path in sorted(self.logs.glob("*.log")):
            if only is not None and path.stem not in only:
                continue
            offset = self.offsets.get(path, 0)
            size = path.stat().st_size
            if size < offset:
                offset = 0
            if size == offset:
                continue
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read(size - offset)
            complete = chunk.rfind(b"\n") + 1
            self.offsets[path] = offset + complete
            for line in chunk[:complete].decode(errors="replace").splitlines():
                console.service_line(path.stem, line)


def tail_lines(path: Path, count: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            return fh.read().decode(errors="replace").splitlines()[-count:]
    except FileNotFoundError:
        return []
