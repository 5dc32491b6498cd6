"""Write a rendered `Bundle` to disk: for `prefectstack render ...` and for the Compose
backend, which renders its project into the state dir before starting it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from prefectstack.render import Bundle
from prefectstack.runtime.files import write_atomic


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
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, text, mode)
