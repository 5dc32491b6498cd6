"""The dependency lock (requirements.lock): the tested closure of prefectstack[test], pinned.

Pure logic shared by scripts/lock.py and tests/unit/test_lock.py: the closure of a set of
requirements over a metadata lookup (environment markers and extras honoured), the lock
file's text, its parsing, and the differences between a lock and what is installed.
Only `installed()` and the `project_*` functions read anything (installed metadata and
pyproject.toml); the rest takes its inputs as arguments.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

REFRESH = (
    'in a fresh virtualenv, pip install -e ".[test]" (no constraints), '
    "python scripts/lock.py --write, bash scripts/test.sh; commit the lock only if the suite passed"
)


@dataclass(frozen=True)
class Dist:
    """What the closure needs of one installed distribution."""

    name: str
    version: str
    requires: tuple[str, ...] = ()


Lookup = Callable[[str], Dist | None]


@dataclass(frozen=True)
class Drift:
    """One package whose locked and installed versions differ (None: absent on that side)."""

    name: str
    locked: str | None
    installed: str | None

    def __str__(self) -> str:
        if self.locked is None:
            return f"{self.name}: installed {self.installed}, not in requirements.lock"
        if self.installed is None:
            return f"{self.name}: locked {self.locked}, not installed (or no longer required)"
        return f"{self.name}: locked {self.locked}, installed {self.installed}"


class LockError(Exception):
    """The closure cannot be computed, or the lock file cannot be read."""


def installed(name: str) -> Dist | None:
    """The distribution `name` as installed for this Python, or None."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Dist(dist.metadata["Name"], dist.version, tuple(dist.requires or ()))


def project_requirements(pyproject: Path, extras: Iterable[str] = ()) -> tuple[str, list[str]]:
    """The project's name and its own requirements from pyproject.toml: runtime plus extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = [str(r) for r in project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise LockError(f"{pyproject} has no optional-dependencies {extra!r}")
        requirements += [str(r) for r in optional[extra]]
    return str(project["name"]), requirements


def project_closure(
    pyproject: Path, extras: Iterable[str] = (), lookup: Lookup = installed
) -> dict[str, str]:
    """The closure of the project's requirements (the project itself not listed)."""
    name, requirements = project_requirements(pyproject, extras)
    return closure(requirements, lookup, exclude=[name])


def _applies(requirement: Requirement, extra: str) -> bool:
    if requirement.marker is None:
        return True
    return requirement.marker.evaluate({"extra": extra})


def closure(
    requirements: Iterable[str], lookup: Lookup, *, exclude: Iterable[str] = ()
) -> dict[str, str]:
    """Every distribution reachable from `requirements` (canonical name -> installed version).

    A requirement counts when its environment marker holds for this interpreter; a
    distribution's requirements behind `extra == "x"` count only when something asked for
    `name[x]`. Names in `exclude` are followed but not listed (the project itself).
    Raises LockError naming every required distribution that is not installed.
    """
    excluded = {canonicalize_name(n) for n in exclude}
    found: dict[str, Dist] = {}
    missing: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    # (requirement, the extra of its requirer in force when it was declared, who asked)
    todo: list[tuple[str, str, str]] = [(r, "", "the project") for r in requirements]
    while todo:
        text, extra, requirer = todo.pop()
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            raise LockError(
                f"{requirer} declares an invalid requirement {text!r}: {error}"
            ) from error
        if not _applies(requirement, extra):
            continue
        name = canonicalize_name(requirement.name)
        wanted = ["", *sorted(canonicalize_name(e) for e in requirement.extras)]
        for want in wanted:
            if (name, want) in done:
                continue
            done.add((name, want))
            dist = found.get(name) or lookup(name)
            if dist is None:
                missing.setdefault(name, f"{requirement} (required by {requirer})")
                break
            found[name] = dist
            label = f"{name}[{want}]" if want else name
            todo += [(r, want, label) for r in dist.requires]
    if missing:
        lines = "\n".join(f"  {why}" for why in sorted(missing.values()))
        raise LockError(f"required but not installed:\n{lines}")
    return {n: d.version for n, d in sorted(found.items()) if n not in excluded}


def render(pins: Mapping[str, str], header: str) -> str:
    """The lock file: `header` as comment lines, then one sorted `name==version` a line."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = "".join(f"{canonicalize_name(n)}=={v}\n" for n, v in sorted(_canonical(pins).items()))
    return comments + body


def parse(text: str) -> dict[str, str]:
    """A lock file's pins (canonical name -> version); comments and blank lines are skipped."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = (part.strip() for part in line.partition("=="))
        if not sep or not name or not version or any(c in version for c in "=<>!~,; "):
            raise LockError(f"line {number}: expected name==version, got {raw!r}")
        key = canonicalize_name(name)
        if key in pins:
            raise LockError(f"line {number}: {name} is pinned twice")
        pins[key] = version
    return pins


def diff(locked: Mapping[str, str], current: Mapping[str, str]) -> list[Drift]:
    """Packages whose version differs between the lock and the installed closure, by name."""
    a, b = _canonical(locked), _canonical(current)
    return [
        Drift(name, a.get(name), b.get(name))
        for name in sorted(a.keys() | b.keys())
        if a.get(name) != b.get(name)
    ]


def _canonical(pins: Mapping[str, str]) -> dict[str, str]:
    return {canonicalize_name(n): v for n, v in pins.items()}
