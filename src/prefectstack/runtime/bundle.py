"""Write a rendered `Bundle` to disk: for `prefectstack render ...` and for the Compose
backend, which renders its project into the state dir before starting it."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from prefectstack.render import Bundle


def write_bundle(bundle: Bundle, out_dir: Path) -> list[Path]:
    """Write every file of `bundle` under `out_dir`; returns the paths written."""
    written: list[Path] = []
    for rel, text in bundle.files.items():
        mode = 0o600 if rel in bundle.private else 0o644
        written.append(_write_atomic(out_dir / rel, text, mode))
    for rel, text in bundle.seeds.items():
        if not (out_dir / rel).exists():
            written.append(_write_atomic(out_dir / rel, text, 0o644))
    package = resources.files("prefectstack")
    for rel, source in bundle.copies.items():
        if source.endswith("/"):
            pairs = [(f"{rel}{item.name}", item) for item in package.joinpath(source).iterdir()
                     if item.name.endswith(".py")]
        else:
            pairs = [(rel, package.joinpath(source))]
        for dest, item in sorted(pairs, key=lambda pair: pair[0]):
            written.append(_write_atomic(out_dir / dest, item.read_text(), 0o644))
    return written


def _write_atomic(path: Path, text: str, mode: int) -> Path:
    """tmp + rename: a reader never sees half a file, and a private file is never, even
    briefly, readable by others (its mode is set when it is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask; an old tmp kept its own
    os.replace(tmp, path)
    return path
