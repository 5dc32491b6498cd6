"""requirements.lock is what the suite runs on: the installed closure of prefectstack[test]
must match it exactly, and it must keep the pins Prefect 3.8.8 is known to work with."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version

from prefectstack.lock import (
    REFRESH,
    Dist,
    Drift,
    LockError,
    closure,
    diff,
    parse,
    project_closure,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def _pins() -> dict[str, str]:
    return parse(LOCK.read_text())


# --- the real environment -------------------------------------------------------------------


def test_installed_closure_matches_the_lock() -> None:
    try:
        installed = project_closure(ROOT / "pyproject.toml", ["test"])
    except LockError as error:
        pytest.fail(f"{error}\ninstall the lock: pip install -c requirements.lock -e '.[test]'")
    drift = diff(_pins(), installed)
    report = "\n".join(f"  {d}" for d in drift)
    assert drift == [], (
        f"the installed packages drifted from requirements.lock:\n{report}\n"
        "install the locked versions: pip install -c requirements.lock -e '.[test]'\n"
        f"or, to move the lock on: {REFRESH}"
    )


def test_lock_keeps_the_known_good_pins() -> None:
    pins = _pins()
    assert pins["prefect"] == "3.8.8"
    assert pins["fastapi"] == "0.139.2"
    # Prefect 3.8.8's scheduler fails on SQLAlchemy 2.1 ("Can't evaluate bulk DML statement")
    assert Version("2.0") <= Version(pins["sqlalchemy"]) < Version("2.1")
    assert "prefectstack" not in pins


def test_lock_file_is_sorted_canonical_and_generated() -> None:
    text = LOCK.read_text()
    pins = [line for line in text.splitlines() if line and not line.startswith("#")]
    names = [line.split("==")[0] for line in pins]
    assert names == sorted(names), "sorted by name"
    assert text == render(_pins(), _header(text)), "made by scripts/lock.py, not by hand"
    assert "scripts/lock.py --write" in _header(text)


def test_install_commands_use_the_lock() -> None:
    assert 'pip install -q -c requirements.lock -e ".[test]"' in (
        ROOT / "scripts" / "test.sh"
    ).read_text()


def _header(text: str) -> str:
    return "\n".join(
        line.removeprefix("#").removeprefix(" ")
        for line in text.splitlines()
        if line.startswith("#")
    )


# --- the closure, on fake metadata ----------------------------------------------------------


def _lookup(*dists: Dist) -> dict[str, Dist]:
    return {d.name.lower().replace("_", "-"): d for d in dists}


def _closure(roots: list[str], *dists: Dist, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    index = _lookup(*dists)
    return closure(roots, index.get, exclude=exclude)


def test_closure_follows_requirements_transitively() -> None:
    got = _closure(
        ["app"],
        Dist("app", "1", ("lib>=1", "other")),
        Dist("lib", "2", ("base",)),
        Dist("other", "3", ("base<9",)),
        Dist("base", "4"),
        Dist("unrelated", "5"),
    )
    assert got == {"app": "1", "lib": "2", "other": "3", "base": "4"}


def test_closure_excludes_the_project_itself() -> None:
    got = _closure(["me"], Dist("me", "0.1", ("lib",)), Dist("lib", "1"), exclude=("Me",))
    assert got == {"lib": "1"}


def test_closure_honours_environment_markers() -> None:
    got = _closure(
        ["app"],
        Dist(
            "app",
            "1",
            (
                'backport; python_version < "3.0"',
                'winonly; sys_platform == "win32" and sys_platform != "linux"',
                'modern; python_version >= "3.11"',
            ),
        ),
        Dist("backport", "1"),
        Dist("winonly", "1"),
        Dist("modern", "1"),
    )
    assert got == {"app": "1", "modern": "1"}


def test_closure_follows_only_the_extras_asked_for() -> None:
    dists = (
        Dist("app", "1", ("sqlalchemy[asyncio]",)),
        Dist(
            "sqlalchemy",
            "2.0.1",
            ('greenlet; extra == "asyncio"', 'asyncpg; extra == "postgresql-asyncpg"'),
        ),
        Dist("greenlet", "3"),
        Dist("asyncpg", "0.3"),
    )
    assert _closure(["app"], *dists) == {"app": "1", "sqlalchemy": "2.0.1", "greenlet": "3"}
    # an extra asked for at the root, and an extra's requirement that itself has extras
    assert _closure(["sqlalchemy[postgresql_asyncpg]"], *dists) == {
        "sqlalchemy": "2.0.1",
        "asyncpg": "0.3",
    }


def test_closure_extra_requirements_chain() -> None:
    got = _closure(
        ["a[x]"],
        Dist("a", "1", ('b[y]; extra == "x"',)),
        Dist("b", "1", ('c; extra == "y"', 'd; extra == "z"')),
        Dist("c", "1"),
        Dist("d", "1"),
    )
    assert got == {"a": "1", "b": "1", "c": "1"}


def test_closure_normalises_names() -> None:
    got = _closure(
        ["My_App"],
        Dist("my-app", "1", ("Ruamel.YAML", "typing_extensions", "PyYAML")),
        Dist("ruamel-yaml", "0.18"),
        Dist("typing-extensions", "4"),
        Dist("pyyaml", "6"),
    )
    assert got == {"my-app": "1", "ruamel-yaml": "0.18", "typing-extensions": "4", "pyyaml": "6"}


def test_closure_reports_every_missing_requirement() -> None:
    with pytest.raises(LockError) as caught:
        _closure(["app"], Dist("app", "1", ("gone>=1", "also-gone", 'skipped; os_name == "xx"')))
    message = str(caught.value)
    assert "gone>=1 (required by app)" in message
    assert "also-gone (required by app)" in message
    assert "skipped" not in message


def test_closure_tolerates_cycles() -> None:
    got = _closure(["a"], Dist("a", "1", ("b",)), Dist("b", "2", ("a",)))
    assert got == {"a": "1", "b": "2"}


# --- the lock file and its differences ------------------------------------------------------


def test_render_and_parse_round_trip() -> None:
    text = render({"Zeta_Pkg": "1.0", "alpha": "2.0"}, "made by a test\nrefresh: never")
    assert text == "# made by a test\n# refresh: never\nalpha==2.0\nzeta-pkg==1.0\n"
    assert parse(text) == {"alpha": "2.0", "zeta-pkg": "1.0"}


def test_parse_normalises_and_skips_comments() -> None:
    text = "# header\n\nSQLAlchemy==2.0.58  # the 2.0 line\nruamel.yaml==0.18\n"
    assert parse(text) == {"sqlalchemy": "2.0.58", "ruamel-yaml": "0.18"}


@pytest.mark.parametrize("line", ["foo", "foo>=1", "foo==", "==1", "foo==1,<2", "foo===1"])
def test_parse_rejects_anything_but_exact_pins(line: str) -> None:
    with pytest.raises(LockError, match="line 2"):
        parse(f"# header\n{line}\n")


def test_parse_rejects_a_name_pinned_twice() -> None:
    with pytest.raises(LockError, match="pinned twice"):
        parse("Foo_Bar==1\nfoo-bar==1\n")


def test_diff_both_directions() -> None:
    locked = {"same": "1", "Changed": "1.0", "gone": "3"}
    current = {"same": "1", "changed": "1.1", "New_One": "2"}
    drift = diff(locked, current)
    assert drift == [
        Drift("changed", "1.0", "1.1"),
        Drift("gone", "3", None),
        Drift("new-one", None, "2"),
    ]
    assert [str(d) for d in drift] == [
        "changed: locked 1.0, installed 1.1",
        "gone: locked 3, not installed (or no longer required)",
        "new-one: installed 2, not in requirements.lock",
    ]
    assert diff(current, current) == []
