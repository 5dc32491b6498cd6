"""Ingest a folder of JSON records, enrich each from reference data, quarantine the bad ones.

The seed documents' ingestion/enrichment pipeline, in the shape that survives production:

- one subflow run per record, called with `return_state=True`, so a bad record fails its own
  run and the batch carries on;
- records that fail are moved to a quarantine folder (with a `.error.txt` note next to each),
  so they can be fixed and re-run: move them back, or point `source_dir` at the quarantine;
- enrichment lookups are cached by Prefect (`cache_key_fn` + `cache_expiration`; results
  persisted on the worker's local storage, or in `cache_dir`), so a value looked up once is
  not looked up again until the cache expires, across records and across runs;
- a Markdown summary artifact lists what happened to every record.

Records are `*.json` files holding one JSON object each; the value of `lookup_field` is looked
up in `lookup_file`, a JSON object that maps values to reference data (standing in for a slow
reference service). The enriched record is written to `output_dir/<name>.json` with the
reference data under `"enrichment"`.

Future work: an object-store prefix (`s3://bucket/prefix`) as the source. Prefect already
depends on fsspec, so listing with `fs.glob` and quarantining with `fs.mv` is the natural path.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from prefectstack.flows._common import existing_dir, markdown_table, retry_transient, shorten

DEFAULT_CACHE_HOURS = 24.0


def lookup_cache_key(context: TaskRunContext | None, parameters: dict[str, Any]) -> str:
    """The cache key of one lookup: which reference, which field, which value.

    Deliberately not the reference file's contents (reading them is the cost being saved):
    after changing the reference data, run once with `refresh_cache=True`.
    """
    reference = str(Path(parameters["lookup_file"]).expanduser().resolve())
    raw = json.dumps([reference, parameters["field"], parameters["value"]])
    return "enrichment-" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def parse_record_text(text: str, lookup_field: str) -> dict[str, Any]:
    """The record in `text`, or a `ValueError` saying what is wrong with it. Pure."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, not {type(record).__name__}")
    value = record.get(lookup_field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {lookup_field!r} must be a non-empty string, got {value!r}")
    return record


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient)
def read_record(record_path: str, lookup_field: str) -> dict[str, Any]:
    """Read and validate one record file."""
    return parse_record_text(Path(record_path).read_text(encoding="utf-8"), lookup_field)


@task(
    name="lookup",
    cache_key_fn=lookup_cache_key,
    cache_expiration=timedelta(hours=DEFAULT_CACHE_HOURS),
    persist_result=True,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient,
)
def lookup(lookup_file: str, field: str, value: str) -> dict[str, Any]:
    """Reference data for `value` of `field` (the expensive call the cache saves)."""
    get_run_logger().info("looking up %s=%r in %s", field, value, lookup_file)
    reference = json.loads(Path(lookup_file).read_text(encoding="utf-8"))
    if value not in reference:
        raise LookupError(f"no reference data for {field}={value!r} in {lookup_file}")
    entry: dict[str, Any] = reference[value]
    return entry


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient)
def write_output(output_dir: str, name: str, document: dict[str, Any]) -> str:
    """Write `document` to `output_dir/name` atomically; returns the path."""
    target = Path(output_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, target)
    return str(target)


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient)
def quarantine(record_path: str, quarantine_dir: str, reason: str) -> str:
    """Move a failed record into `quarantine_dir`, with the reason in `<name>.error.txt`."""
    source = Path(record_path)
    folder = Path(quarantine_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    (folder / f"{source.name}.error.txt").write_text(reason + "\n", encoding="utf-8")
    os.replace(source, target)
    return str(target)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def list_records(source_dir: str, pattern: str) -> list[str]:
    """The record files directly in `source_dir` that match the glob `pattern`, sorted."""
    root = existing_dir(source_dir, "source_dir")
    return sorted(str(p) for p in root.glob(pattern) if p.is_file())


def _record_run_name() -> str:
    return "record-" + Path(str(flow_run.parameters.get("record_path", "?"))).name


@flow(name="ingest-record", flow_run_name=_record_run_name, timeout_seconds=600)
def ingest_record(
    record_path: str,
    lookup_file: str,
    lookup_field: str,
    output_dir: str,
    cache_hours: float = DEFAULT_CACHE_HOURS,
    cache_dir: str | None = None,
    refresh_cache: bool = False,
) -> dict[str, Any]:
    """Read, enrich and write one record. Raises (failing this subflow run) on a bad record.

    Returns:
        `{"record": <file name>, "output": <path written>, "cached": <lookup was a cache hit>}`.
    """
    record = read_record(record_path, lookup_field)
    value = record[lookup_field]
    options: dict[str, Any] = {
        "cache_expiration": timedelta(hours=cache_hours),
        "refresh_cache": refresh_cache,
    }
    if cache_dir:
        options["result_storage"] = Path(cache_dir).expanduser().resolve()  # a local folder
    state = lookup.with_options(**options)(lookup_file, lookup_field, value, return_state=True)
    enrichment = state.result()  # raises the lookup's error when it failed
    name = Path(record_path).name
    output = write_output(output_dir, name, {**record, "enrichment": {lookup_field: enrichment}})
    return {"record": name, "output": output, "cached": state.name == "Cached"}


def summary_markdown(rows: list[dict[str, Any]], quarantine_dir: str) -> str:
    """The summary artifact: counts, one row per record, and how to re-run the failures."""
    done = sum(1 for r in rows if r["status"] == "processed")
    hits = sum(1 for r in rows if r.get("cached"))
    text = [
        "# Ingestion summary",
        "",
        f"{done} processed, {len(rows) - done} quarantined, "
        f"{hits} enrichment lookup(s) served from cache.",
        "",
        markdown_table(rows, ["record", "status", "cached", "detail"]),
    ]
    if done < len(rows):
        text += [
            "",
            f"Quarantined records are in `{quarantine_dir}` with a `.error.txt` note each. "
            "Fix them and move them back, or run this flow with `source_dir` set to that folder.",
        ]
    return "\n".join(text) + "\n"


@flow(name="ingest-records", timeout_seconds=6 * 3600)
def ingest_records(
    source_dir: str,
    lookup_file: str,
    lookup_field: str = "country",
    output_dir: str | None = None,
    quarantine_dir: str | None = None,
    pattern: str = "*.json",
    cache_hours: float = DEFAULT_CACHE_HOURS,
    cache_dir: str | None = None,
    refresh_cache: bool = False,
    artifact_key: str = "ingestion-summary",
) -> dict[str, Any]:
    """Ingest every record in `source_dir`, one subflow run each; quarantine failures.

    Args:
        source_dir: Folder holding the record files (not searched recursively).
        lookup_file: JSON object mapping `lookup_field` values to reference data.
        lookup_field: The record field whose value is looked up.
        output_dir: Where enriched records go (default: `<source_dir>/enriched`).
        quarantine_dir: Where failed records are moved (default: `<source_dir>/quarantine`).
        pattern: Glob for record files in `source_dir`.
        cache_hours: How long a lookup result stays cached.
        cache_dir: Where cached lookups are persisted (default: the worker's local result
            storage, `$PREFECT_HOME/storage`). Point several workers at shared storage to share
            the cache.
        refresh_cache: Ignore cached lookups this time (and refresh them).
        artifact_key: Key of the Markdown summary artifact.

    Returns:
        `{"processed": [names], "quarantined": [names], "cache_hits": <count>}`. The run
        completes even when records were quarantined; the summary artifact says which.
    """
    logger = get_run_logger()
    source = existing_dir(source_dir, "source_dir")
    existing_dir(str(Path(lookup_file).parent), "folder of lookup_file")
    output = output_dir or str(source / "enriched")
    quarantined_to = quarantine_dir or str(source / "quarantine")
    rows: list[dict[str, Any]] = []
    for path in list_records(str(source), pattern):
        state = ingest_record(
            path, lookup_file, lookup_field, output, cache_hours, cache_dir, refresh_cache,
            return_state=True,
        )
        name = Path(path).name
        if state.is_completed():
            result = state.result()
            rows.append({"record": name, "status": "processed", "cached": result["cached"],
                         "detail": result["output"]})
            continue
        reason = state.message or state.name or "failed"
        quarantine(path, quarantined_to, reason)
        logger.warning("quarantined %s: %s", name, reason)
        rows.append({"record": name, "status": "quarantined", "cached": False,
                     "detail": shorten(reason)})
    create_markdown_artifact(
        key=artifact_key,
        markdown=summary_markdown(rows, quarantined_to),
        description=f"Ingestion of {source}",
    )
    result = {
        "processed": [r["record"] for r in rows if r["status"] == "processed"],
        "quarantined": [r["record"] for r in rows if r["status"] == "quarantined"],
        "cache_hits": sum(1 for r in rows if r["cached"]),
    }
    logger.info(
        "%d processed, %d quarantined, %d cache hit(s)",
        len(result["processed"]), len(result["quarantined"]), result["cache_hits"],
    )
    return result
