"""The pure diff: desired vs actual → creates, field-by-field updates, managed-only deletes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from prefectstack.deploy.plan import HIDDEN, make_plan
from prefectstack.deploy.state import (
    Obj,
    ServerData,
    State,
    canonical_schedule,
    from_server,
    registry_variable,
    secret_digest,
)
from prefectstack.errors import StackError
from prefectstack.stack.deployments import MANAGED_TAG

CRON_9 = canonical_schedule({"cron": "0 9 * * *"}, True, {})
CRON_10 = canonical_schedule({"cron": "0 10 * * *"}, True, {})


def dep(name: str = "etl/daily", managed: bool = True, **fields: Any) -> Obj:
    base: dict[str, Any] = {
        "entrypoint": "flows/etl.py:etl", "work_pool": "pool", "work_queue": "default",
        "schedules": [CRON_9], "parameters": {"n": 1}, "description": None,
        "tags": sorted(["etl", MANAGED_TAG] if managed else ["etl"]),
    }
    return Obj("deployment", name, {**base, **fields}, managed=managed)


def pool(name: str = "pool", managed: bool = True, **fields: Any) -> Obj:
    return Obj("work_pool", name, {"type": "process", "concurrency_limit": None, **fields},
               managed=managed)


def plan(desired: list[Obj], actual: list[Obj], prune: bool = False) -> Any:
    return make_plan(State.of(desired), State.of(actual), target="http://x/api", prune=prune)


def test_missing_objects_are_created_in_dependency_order() -> None:
    p = plan([dep(), pool(), Obj("variable", "v", {"value": 1, "tags": [MANAGED_TAG]})], [])
    assert [(c.action, c.kind, c.name) for c in p.changes] == [
        ("create", "variable", "v"), ("create", "work_pool", "pool"),
        ("create", "deployment", "etl/daily"),
    ]
    assert p.counts() == {"create": 3, "update": 0, "delete": 0}
    fields = {f.field: f.after for f in p.changes[2].fields}
    assert fields["work_pool"] == "pool" and "description" not in fields  # None is not shown


def test_identical_state_is_a_no_op() -> None:
    p = plan([dep(), pool()], [dep(), pool()])
    assert not p.has_changes and p.changes == ()
    assert p.lines() == ["No changes: http://x/api matches the stack file."]


def test_updates_list_exactly_the_fields_that_differ() -> None:
    p = plan([dep(schedules=[CRON_10], description="new")], [pool(), dep()])
    (change,) = p.changes
    assert (change.action, change.kind, change.name) == ("update", "deployment", "etl/daily")
    assert [(f.field, f.before, f.after) for f in change.fields] == [
        ("schedules", [CRON_9], [CRON_10]), ("description", None, "new"),
    ]
    text = "\n".join(p.lines())
    assert "~ deployment etl/daily" in text
    assert "schedules: [cron '0 9 * * *' UTC] → [cron '0 10 * * *' UTC]" in text
    assert 'description: (none) → "new"' in text


def test_drift_made_by_hand_is_an_update() -> None:
    by_hand = dep(paused=True, tags=sorted(["etl", "ui-added", MANAGED_TAG]))
    p = plan([dep(paused=False)], [pool(), by_hand])
    assert {f.field for f in p.changes[0].fields} == {"paused", "tags"}


def test_managed_objects_that_left_the_file_are_deleted_only_with_prune() -> None:
    actual = [pool(), dep(), dep("etl/old"), dep("etl/manual", managed=False),
              pool("other", managed=False)]
    kept = plan([pool(), dep()], actual)
    assert not kept.has_changes
    assert kept.orphans == ("deployment etl/old",)
    assert "`--prune` deletes them" in kept.lines()[-1]
    pruned = plan([pool(), dep()], actual, prune=True)
    assert [(c.action, c.name) for c in pruned.changes] == [("delete", "etl/old")]
    assert pruned.orphans == ()


def test_deletes_run_in_reverse_dependency_order() -> None:
    actual = [pool("gone"), Obj("work_queue", "gone/high", {}),
              dep("etl/x", work_pool="gone"), Obj("variable", "v", {"value": 1})]
    p = plan([], [*actual, pool("stays", managed=False)], prune=True)
    # The queue goes with its pool; deployments first, pools after.
    assert [(c.kind, c.name) for c in p.changes] == [
        ("deployment", "etl/x"), ("work_pool", "gone"), ("variable", "v"),
    ]


def test_default_queue_is_never_deleted_and_used_pools_are_kept() -> None:
    actual = [pool("p"), Obj("work_queue", "p/default", {}), Obj("work_queue", "p/high", {}),
              dep("etl/manual", managed=False, work_pool="p")]
    p = plan([], actual, prune=True)
    assert [(c.kind, c.name) for c in p.changes] == [("work_queue", "p/high")]
    assert any("deployments still use it: etl/manual" in w for w in p.warnings)


def test_an_unmanaged_object_of_the_same_name_is_adopted() -> None:
    p = plan([pool()], [pool(managed=False)])
    (change,) = p.changes
    assert change.action == "update" and change.adopt and change.fields == ()
    assert "(adopt: mark as managed)" in p.lines()[1]


def test_loose_fields_compare_only_what_the_file_says() -> None:
    want = Obj("work_queue", "p/q", {"priority": None, "paused": False}, loose=frozenset(
        {"priority"}))
    assert not plan([want, pool("p")], [Obj("work_queue", "p/q", {"priority": 7,
                                                                   "paused": False}),
                                        pool("p")]).has_changes
    want_pool = pool("p", base_job_template={"image": "a"})
    want_pool = Obj("work_pool", "p", want_pool.fields, loose=frozenset({"base_job_template"}))
    have = pool("p", base_job_template={"image": "a", "cpu": 1})
    assert not plan([want_pool], [have]).has_changes
    changed = plan([want_pool], [pool("p", base_job_template={"image": "b"})])
    assert changed.changes[0].fields[0].field == "base_job_template"


def test_interval_without_anchor_leaves_the_anchor_to_the_server() -> None:
    want = canonical_schedule({"interval": 3600}, True, {})
    have = canonical_schedule(
        {"interval": 3600.0, "anchor_date": "2024-05-01T10:00:00Z", "timezone": "UTC"}, True, {})
    assert not plan([dep(schedules=[want])], [pool(), dep(schedules=[have])]).has_changes
    anchored = canonical_schedule({"interval": 3600, "anchor_date": "2024-01-01T00:00:00+00:00"},
                                  True, {})
    assert plan([dep(schedules=[anchored])], [pool(), dep(schedules=[have])]).has_changes


def test_schedule_order_does_not_matter_but_paused_does() -> None:
    assert not plan([dep(schedules=[CRON_10, CRON_9])],
                    [pool(), dep(schedules=[CRON_9, CRON_10])]).has_changes
    paused = canonical_schedule({"cron": "0 9 * * *"}, False, {})
    p = plan([dep(schedules=[paused])], [pool(), dep()])
    assert "(paused)" in "\n".join(p.lines())


def test_secret_values_never_appear_in_a_plan() -> None:
    want = Obj("secret", "token", {"value": secret_digest("new-secret")},
               extra={"value": "new-secret"})
    have = Obj("secret", "token", {"value": secret_digest("old-secret")})
    for p in (plan([want], [have]), plan([want], [])):
        text = json.dumps(p.to_json()) + "\n".join(p.lines())
        assert "new-secret" not in text and "old-secret" not in text
        assert HIDDEN in text and "sha256" not in text


def test_a_deployment_needs_an_existing_or_declared_pool() -> None:
    with pytest.raises(StackError) as exc:
        plan([dep(work_pool="nowhere")], [])
    assert "work pool `nowhere` does not exist" in exc.value.message
    assert exc.value.exit_code == 2


def test_a_pool_type_cannot_change() -> None:
    with pytest.raises(StackError) as exc:
        plan([pool(type="docker")], [pool()])
    assert "`process` on the server but `docker`" in exc.value.message


def test_ensure_only_pools_are_created_but_never_updated() -> None:
    worker_pool = Obj("work_pool", "w", {"type": "process"}, managed=False, ensure_only=True)
    assert [c.action for c in plan([worker_pool], []).changes] == ["create"]
    assert not plan([worker_pool], [pool("w", description="by hand")]).has_changes


def test_plan_json_is_stable_and_serialisable() -> None:
    p = plan([dep(description="x")], [pool(), dep()])
    data = json.loads(json.dumps(p.to_json()))
    assert data == {
        "target": "http://x/api",
        "changes": [{"action": "update", "kind": "deployment", "name": "etl/daily",
                     "adopt": False,
                     "fields": [{"field": "description", "before": None, "after": "x"}]}],
        "summary": {"create": 0, "update": 1, "delete": 0},
        "orphans": [],
        "warnings": [],
    }


def raw_deployment(**over: Any) -> dict[str, Any]:
    return {
        "id": "d1", "name": "daily", "flow_id": "f1", "flow_name": "etl",
        "entrypoint": "flows/etl.py:etl", "pull_steps": None, "work_pool_name": "pool",
        "work_queue_name": "default", "parameters": {}, "tags": ["b", "a"],
        "schedules": [{"schedule": {"cron": "0 9 * * *", "timezone": "UTC", "day_or": True},
                       "active": True, "parameters": {}}],
        "global_concurrency_limit": {"limit": 2}, "concurrency_options": {
            "collision_strategy": "CANCEL_NEW"},
        "paused": False, "enforce_parameter_schema": True, **over,
    }


def test_server_json_becomes_comparable_objects() -> None:
    data = ServerData(
        work_pools=[{"name": "pool", "type": "process", "is_paused": False,
                     "base_job_template": {"variables": {"properties": {
                         "command": {"default": None}, "stream_output": {"default": True}}}}},
                    {"name": "prefect-internal", "type": "x"}],
        work_queues={"pool": [{"name": "default", "priority": 1, "is_paused": False}]},
        deployments=[raw_deployment()],
        concurrency_limits=[{"name": "db", "limit": 3, "active": True},
                            {"name": "deployment:d1", "limit": 2}],
        variables=[{"name": "region", "value": "eu", "tags": [MANAGED_TAG]},
                   {"name": registry_variable("work_pool"), "value": ["pool"]}],
        secrets=[{"id": "s1", "name": "token", "value": "hunter2"}],
    )
    state = from_server(data)
    assert sorted(state.objects) == [
        ("concurrency_limit", "db"), ("deployment", "etl/daily"), ("secret", "token"),
        ("variable", "region"), ("work_pool", "pool"), ("work_queue", "pool/default"),
    ]
    pool_obj = state.objects[("work_pool", "pool")]
    assert pool_obj.managed  # listed in the registry variable
    assert pool_obj.fields["base_job_template"] == {"command": None, "stream_output": True}
    d = state.objects[("deployment", "etl/daily")]
    assert not d.managed and d.fields["tags"] == ["a", "b"]
    assert d.fields["concurrency_limit"] == 2 and d.fields["collision_strategy"] == "CANCEL_NEW"
    assert d.fields["schedules"] == [CRON_9] and d.fields["pull_steps"] == []
    assert state.objects[("variable", "region")].managed
    assert not state.objects[("concurrency_limit", "db")].managed
    assert state.objects[("secret", "token")].fields == {"value": secret_digest("hunter2")}
