"""Check that the files in a folder follow naming rules; report every violation.

The seed documents' "content filenames verification" job: a content drop (assets, exports,
test data) must use predictable names before anything downstream consumes it. This flow
lists the files, checks each name against a regular expression, looks for names that differ
only by case (they collide on Windows and macOS file systems), publishes all violations as one
table artifact, and fails the run when there is at least one.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from prefectstack.flows._common import existing_dir, retry_transient, shorten

# Lowercase letters, digits, `_` and `-`, then one or more lowercase extensions.
DEFAULT_PATTERN = r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9]+)+"


class ContentViolations(RuntimeError):
    """At least one file breaks the naming rules; the message lists the first few."""


@dataclass(frozen=True)
class Violation:
    """One broken rule for one file (path relative to the checked folder, with `/`)."""

    path: str
    rule: str
    detail: str


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The compiled rule, or a `ValueError` that says the parameter is the problem."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc


def find_violations(
    paths: Iterable[str], pattern: str, case_collisions: bool = True
) -> list[Violation]:
    """Every rule each relative path breaks, in path order. Pure: no file system access.

    A file name (not its folder) must match `pattern` completely. With `case_collisions`,
    names in one folder that are equal ignoring case are reported, each against the others.
    """
    rule = compile_pattern(pattern)
    ordered = sorted(paths)
    found: list[Violation] = []
    by_folded: dict[str, list[str]] = defaultdict(list)
    for path in ordered:
        name = PurePosixPath(path).name
        if not rule.fullmatch(name):
            found.append(Violation(path, "pattern", f"{name!r} does not match {pattern!r}"))
        by_folded[path.casefold()].append(path)
    if case_collisions:
        for group in (g for g in by_folded.values() if len(g) > 1):
            for path in group:
                others = ", ".join(p for p in group if p != path)
                detail = f"same name ignoring case as {others}"
                found.append(Violation(path, "case-collision", detail))
    return sorted(found, key=lambda v: (v.path, v.rule))


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def list_files(folder: str, recursive: bool = True, include_hidden: bool = False) -> list[str]:
    """Relative paths (with `/`) of the files under `folder`; hidden ones only when asked."""
    root = existing_dir(folder, "folder")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = []
    for path in candidates:
        rel = path.relative_to(root)
        if not include_hidden and any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file():
            found.append(rel.as_posix())
    return sorted(found)


def _publish(key: str, folder: str, checked: int, violations: list[Violation]) -> None:
    if violations:
        create_table_artifact(
            key=key,
            table=[asdict(v) for v in violations],
            description=f"{len(violations)} naming violation(s) in {checked} file(s) of `{folder}`",
        )
    else:
        create_markdown_artifact(
            key=key,
            markdown=f"All {checked} file(s) in `{folder}` follow the naming rules.",
            description=f"No naming violations in `{folder}`",
        )


@flow(name="content-verification", timeout_seconds=1800)
def verify_content(
    folder: str,
    pattern: str = DEFAULT_PATTERN,
    recursive: bool = True,
    include_hidden: bool = False,
    case_collisions: bool = True,
    artifact_key: str = "content-verification",
) -> dict[str, int]:
    """Check every file name under `folder` and fail the run if any breaks a rule.

    Args:
        folder: The folder to check (on the worker's machine).
        pattern: Regular expression a file name (without its folder) must match completely.
            The default allows lowercase letters, digits, `_` and `-` plus an extension.
        recursive: Check subfolders too.
        include_hidden: Also check files and folders whose names start with a dot.
        case_collisions: Report names that are equal ignoring case within one folder.
        artifact_key: Key of the artifact that lists the violations (lowercase, digits, `-`).

    Returns:
        `{"checked": <files>, "violations": 0}` when every name is fine. Otherwise the run
        fails with `ContentViolations`, after publishing a table artifact with one row per
        violation (`path`, `rule`, `detail`).
    """
    logger = get_run_logger()
    compile_pattern(pattern)  # fail on a bad rule before touching the folder
    files = list_files(folder, recursive, include_hidden)
    violations = find_violations(files, pattern, case_collisions)
    for v in violations:
        logger.warning("%s: %s (%s)", v.path, v.rule, v.detail)
    _publish(artifact_key, folder, len(files), violations)
    if violations:
        listed = "; ".join(f"{v.path} ({v.rule})" for v in violations[:10])
        more = f" and {len(violations) - 10} more" if len(violations) > 10 else ""
        count = f"{len(violations)} naming violation(s) in {len(files)} file(s)"
        raise ContentViolations(shorten(f"{count}: {listed}{more}", 1000))
    logger.info("all %d file(s) in %s follow the naming rules", len(files), folder)
    return {"checked": len(files), "violations": 0}


if __name__ == "__main__":  # pragma: no cover - a local try-out: python content_verification.py DIR
    import sys

    verify_content(str(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
