#!/usr/bin/env python3
"""Make or check requirements.lock: the installed dependency closure of prefectstack[test].

The closure starts from pyproject.toml (runtime dependencies plus the `test` extra) and
follows each installed distribution's metadata, honouring environment markers and extras.
Usage:

    python scripts/lock.py            # print the lock for what is installed
    python scripts/lock.py --write    # write requirements.lock
    python scripts/lock.py --check    # exit 1, listing the differences, if it has drifted

Refresh the lock only from a fresh virtualenv whose suite passed (see the README's
"The dependency lock").
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the shared logic, even before the project is installed

from prefectstack.lock import (  # noqa: E402
    REFRESH,
    LockError,
    diff,
    parse,
    project_closure,
    render,
)

PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
EXTRAS = ("test",)


def header() -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    text = f"""\
requirements.lock: every distribution in the dependency closure of prefectstack[test]
(runtime + test extras), pinned to the versions the whole suite passed with.
Made by `python scripts/lock.py --write` from the installed metadata (Python {python},
{sys.platform}; environment markers were evaluated there). Do not edit by hand.
Used as constraints: pip install -c requirements.lock -e ".[test]"
tests/unit/test_lock.py fails when the installed closure drifts from this file.
"""
    return text + textwrap.fill(f"Refresh: {REFRESH}.", width=88)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {LOCK.name}")
    mode.add_argument("--check", action="store_true", help=f"compare with {LOCK.name}")
    args = parser.parse_args(argv)
    try:
        pins = project_closure(PYPROJECT, EXTRAS)
        if args.check:
            drift = diff(parse(LOCK.read_text()), pins)
            if drift:
                print(f"{LOCK.name} differs from the installed closure:", file=sys.stderr)
                for item in drift:
                    print(f"  {item}", file=sys.stderr)
                print(f"Install the lock: pip install -c {LOCK.name} -e '.[test]'", file=sys.stderr)
                print(f"or refresh it: {REFRESH}", file=sys.stderr)
                return 1
            print(f"{LOCK.name}: the installed closure matches ({len(pins)} packages)")
            return 0
    except (LockError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = render(pins, header())
    if args.write:
        LOCK.write_text(text)
        print(f"wrote {LOCK.name} ({len(pins)} packages)")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
