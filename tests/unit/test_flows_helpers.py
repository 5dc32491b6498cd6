"""The pure helpers of the flow library (the flows themselves run in tests/integration)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Completed, Failed, Running

from prefectstack.flows._common import (
    CommandFailed,
    CommandTimedOut,
    existing_dir,
    markdown_table,
    retry_transient,
    run_streaming,
    shorten,
)
from prefectstack.flows.content_verification import DEFAULT_PATTERN, Violation, find_violations
from prefectstack.flows.fan_out import DeploymentCall, classify, labels_for, summarize
from prefectstack.flows.ingestion import lookup_cache_key, parse_record_text, summary_markdown
from prefectstack.flows.windows import NotOnWindows, require_windows

# -- content verification ------------------------------------------------------------------


def test_default_pattern_accepts_tidy_names_only() -> None:
    paths = ["a.txt", "x/report_2024-01.csv", "archive.tar.gz", "Upper.txt", "no_ext", "a b.txt"]
    bad = {v.path for v in find_violations(paths, DEFAULT_PATTERN)}
    assert bad == {"Upper.txt", "no_ext", "a b.txt"}


def test_pattern_applies_to_the_name_not_the_folder() -> None:
    assert find_violations(["Some Folder/ok.txt"], DEFAULT_PATTERN) == []


def test_case_collisions_are_reported_against_each_other() -> None:
    found = find_violations(["d/data.csv", "d/DATA.csv", "e/data.csv"], r".*")
    assert found == [
        Violation("d/DATA.csv", "case-collision", "same name ignoring case as d/data.csv"),
        Violation("d/data.csv", "case-collision", "same name ignoring case as d/DATA.csv"),
    ]
    assert find_violations(["d/data.csv", "d/DATA.csv"], r".*", case_collisions=False) == []


def test_invalid_pattern_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        find_violations(["a"], "([")


# -- fan-out --------------------------------------------------------------------------------


def _call(deployment: str, label: str | None = None) -> DeploymentCall:
    return DeploymentCall(deployment=deployment, label=label)


def _run(state: object) -> FlowRun:
    return FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), state=state)


def test_labels_are_distinct() -> None:
    calls = [_call("a/x"), _call("a/x"), _call("b/y", "nightly"), _call("c/z")]
    assert labels_for(calls) == ["a/x#1", "a/x#2", "nightly", "c/z"]


def test_classify_and_summarize() -> None:
    ok = classify("a", _call("a/x"), _run(Completed()))
    bad = classify("b", _call("b/y"), _run(Failed(message="exit 7")))
    late = classify("c", _call("c/z"), _run(Running()))
    missing = classify("d", _call("d/w"), LookupError("no deployment d/w"))
    assert [r.outcome for r in (ok, bad, late, missing)] == ["succeeded", *["failed"] * 3]
    assert late.message == "did not finish in time"
    assert missing.state == "NOT CREATED" and missing.flow_run_id is None
    assert summarize([ok]) == "1 of 1 run(s) succeeded"
    assert summarize([ok, bad, missing]) == (
        "1 of 3 run(s) succeeded; failed: b: Failed - exit 7; "
        "d: NOT CREATED - LookupError: no deployment d/w"
    )


# -- ingestion -------------------------------------------------------------------------------


def test_parse_record_text_says_what_is_wrong() -> None:
    assert parse_record_text('{"country": "NL", "id": 1}', "country")["id"] == 1
    for text, expected in [
        ("{oops", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        ('{"id": 1}', "field 'country' must be a non-empty string"),
    ]:
        with pytest.raises(ValueError, match=expected):
            parse_record_text(text, "country")


def test_lookup_cache_key_depends_on_reference_field_and_value(tmp_path: Path) -> None:
    def key(lookup_file: str, field: str, value: str) -> str:
        return lookup_cache_key(None, {"lookup_file": lookup_file, "field": field, "value": value})

    ref = str(tmp_path / "ref.json")
    assert key(ref, "country", "NL") == key(ref, "country", "NL")
    assert len({key(ref, "country", "NL"), key(ref, "country", "BE"),
                key(ref, "region", "NL"), key(str(tmp_path / "other.json"), "country", "NL")}) == 4


def test_summary_markdown_counts_and_explains_rerun() -> None:
    rows = [
        {"record": "a.json", "status": "processed", "cached": True, "detail": "out/a.json"},
        {"record": "b.json", "status": "quarantined", "cached": False, "detail": "bad | json"},
    ]
    text = summary_markdown(rows, "/q")
    assert "1 processed, 1 quarantined, 1 enrichment lookup(s) served from cache." in text
    assert "| b.json | quarantined | False | bad \\| json |" in text
    assert "`/q`" in text


# -- shared helpers --------------------------------------------------------------------------


def test_markdown_table_and_shorten() -> None:
    assert markdown_table([{"a": 1}], ["a", "b"]) == "| a | b |\n|---|---|\n| 1 |  |"
    assert shorten("a\n  b", 10) == "a b"
    assert shorten("x" * 20, 10) == "x" * 9 + "…"


def test_existing_dir(tmp_path: Path) -> None:
    assert existing_dir(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(NotADirectoryError, match=r"source_dir .* does not exist"):
        existing_dir(str(tmp_path / "nope"), "source_dir")


def test_retry_transient_retries_io_errors_only() -> None:
    assert retry_transient(None, None, Failed(data=TimeoutError("slow share")))
    assert retry_transient(None, None, Failed(data=OSError("reset")))
    assert not retry_transient(None, None, Failed(data=FileNotFoundError("gone")))
    assert not retry_transient(None, None, Failed(data=ValueError("bad record")))


def test_require_windows_explains_routing() -> None:
    require_windows("Windows")
    with pytest.raises(NotOnWindows, match=r"needs a Windows worker.*--work-queue windows"):
        require_windows("Linux")


@pytest.mark.skipif(sys.platform == "win32", reason="uses /bin/sh")
def test_run_streaming_passes_lines_in_order_and_quotes_the_tail(tmp_path: Path) -> None:
    lines: list[str] = []
    code = run_streaming(
        ["/bin/sh", "-c", "echo one; echo two >&2; echo $GREETING; pwd"],
        log=lines.append, cwd=str(tmp_path), env={"GREETING": "hi"},
    )
    assert code == 0 and lines == ["one", "two", "hi", str(tmp_path)]
    with pytest.raises(CommandFailed, match=r"exited with code 4; last lines:\nb\nc$") as info:
        run_streaming(["/bin/sh", "-c", "echo a; echo b; echo c; exit 4"], log=print, tail_lines=2)
    assert info.value.code == 4 and info.value.tail == ["b", "c"]


@pytest.mark.skipif(sys.platform == "win32", reason="uses /bin/sh")
@pytest.mark.timeout(30)
def test_run_streaming_timeout_kills_the_whole_group() -> None:
    # The backgrounded grandchild keeps the pipe open: unless the whole process group is
    # killed, reading would block until it exits (60 s), far past this test's timeout.
    with pytest.raises(CommandTimedOut, match=r"timed out after 0\.5s"):
        run_streaming(["/bin/sh", "-c", "echo x; sleep 60 & sleep 60"], log=print,
                      timeout_seconds=0.5)


def test_missing_working_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="working directory"):
        run_streaming(["true"], log=print, cwd=str(tmp_path / "nope"))
