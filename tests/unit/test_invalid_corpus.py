"""A corpus of invalid stack files (tests/data/invalid/), each with the message it must
produce in `# expect: ...` header lines. Each is loaded the way `prefectstack validate`
loads it (stack.loader.load_stack) and must give one `StackError` with exit code 2, never
another exception, whose message and hint contain every expected fragment."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from prefectstack.errors import StackError
from prefectstack.stack import reader
from prefectstack.stack.loader import load_stack, locate_state_dir

CORPUS_DIR = Path(__file__).resolve().parents[1] / "data" / "invalid"
CORPUS = sorted(CORPUS_DIR.glob("*.yaml"))
UNSET = "PREFECTSTACK_TEST_UNSET"  # the corpus's variable that must not be set
# Every family of the stack file, by file-name prefix.
FAMILIES = {
    "version", "top", "name", "services", "api", "postgres", "redis", "edge", "auth", "workers",
    "examples", "monitoring", "schedule", "deploy", "pool", "concurrency", "variable", "secret",
    "state-dir", "env", "yaml", "encoding",
}


def expectations(path: Path) -> list[str]:
    """The `# expect:` lines, read in whatever encoding the file was (deliberately) saved."""
    data = path.read_bytes()
    for encoding in ("utf-8", "utf-32", "utf-16", "utf-16-le", "latin-1"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if text.lstrip("\ufeff").startswith("# expect: "):
            return [line.removeprefix("# expect: ").strip()
                    for line in text.lstrip("\ufeff").splitlines()
                    if line.startswith("# expect: ")]
    raise AssertionError(f"{path.name} has no `# expect: ...` header")


def load_error(path: Path) -> StackError:
    with pytest.raises(StackError) as info:  # any other exception fails the test
        load_stack(path)
    return info.value


@pytest.fixture(autouse=True)
def _unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET, raising=False)


def test_the_corpus_is_large_and_covers_every_family() -> None:
    assert len(CORPUS) >= 80
    prefixes = {p.stem for p in CORPUS}
    missing = {f for f in FAMILIES if not any(s.startswith(f + "-") for s in prefixes)}
    assert not missing, f"no invalid file for: {sorted(missing)}"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_invalid_file_gives_its_message(path: Path) -> None:
    err = load_error(path)
    assert err.exit_code == 2
    text = str(err)  # message and hint
    assert text.startswith(str(path)), text
    for fragment in expectations(path):
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert "Traceback" not in text and "errors.pydantic.dev" not in text


YAML_LEVEL = [p for p in CORPUS if p.stem.startswith(("yaml-", "encoding-"))]


@pytest.mark.parametrize("path", YAML_LEVEL, ids=[p.stem for p in YAML_LEVEL])
def test_commands_that_only_locate_the_state_dir_are_safe_too(path: Path) -> None:
    """`status`, `down`, `logs` read only `state_dir`, leniently: duplicate keys pass, but
    every bound (encoding, aliases, depth) holds and a failure is a `StackError`."""
    try:
        state_dir = locate_state_dir(path)
    except StackError as exc:
        assert exc.exit_code == 2
        assert not path.stem.startswith("yaml-duplicate-")
    else:
        assert path.stem.startswith("yaml-duplicate-")
        assert state_dir == (path.parent / ".prefectstack").resolve()


@pytest.mark.parametrize("path", [p for p in YAML_LEVEL if p.stem.startswith("yaml-")],
                         ids=[p.stem for p in YAML_LEVEL if p.stem.startswith("yaml-")])
def test_pyyaml_without_libyaml_gives_the_same_errors(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "_Loader", reader._PyLoader)
    err = load_error(path)
    assert err.exit_code == 2
    for fragment in expectations(path):
        if "not valid YAML" not in fragment:  # PyYAML words syntax errors its own way
            assert fragment in str(err)


@pytest.fixture()
def measured(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the nodes the loader composes: the work it did before refusing."""
    calls: list[int] = []
    original = reader._Bounded._measure

    def counting(self: Any, *args: Any) -> None:
        calls.append(1)
        original(self, *args)

    monkeypatch.setattr(reader._Bounded, "_measure", counting)
    return calls


def refused(name: str) -> str:
    """Load a corpus file and return its error; the time is printed, never asserted on."""
    start = time.monotonic()
    err = load_error(CORPUS_DIR / name)
    print(f"{name}: refused in {time.monotonic() - start:.3f}s")
    return str(err)


def test_an_alias_bomb_is_refused_before_it_expands(measured: list[int]) -> None:
    text = refused("yaml-alias-bomb.yaml")
    assert "through aliases at line 8" in text  # the 7th level; two more follow
    assert len(measured) < 100  # nodes composed: the 9**9 it stands for never exist


@pytest.mark.parametrize("name", ["yaml-deep-flow-sequences.yaml", "yaml-deep-flow-mappings.yaml",
                                  "yaml-deep-block-sequences.yaml"])
def test_deep_nesting_is_refused_at_the_limit(name: str, measured: list[int]) -> None:
    text = refused(name)
    assert f"nested more than {reader.MAX_DEPTH} levels deep" in text
    assert len(measured) < 3 * reader.MAX_DEPTH  # refused on the way down, not after 5,000


def test_a_file_over_the_size_limit_is_refused_unparsed(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\n" + "# padding\n" * (reader.MAX_BYTES // 10))
    with pytest.raises(StackError, match="larger than 256 KB") as info:
        load_stack(path)
    assert info.value.exit_code == 2
    assert str(path) in str(info.value)
