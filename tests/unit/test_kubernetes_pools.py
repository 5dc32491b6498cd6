"""`kubernetes` pools in the stack file: what the model accepts, which targets run them, and
the base job template the pools one-shot creates them with (jobs/pools.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from prefectstack.errors import StackError
from prefectstack.jobs import pools
from prefectstack.stack.model import CURRENT_VERSION, Stack
from prefectstack.topology import build, check_target


def stack(**extra: Any) -> Stack:
    return Stack.model_validate({"version": CURRENT_VERSION, **extra})


TWO = {"workers": [{"name": "worker-1", "pool": "default"},
                   {"name": "cluster", "pool": "pods", "type": "kubernetes"}]}


def test_a_kubernetes_worker_is_prefects_own_never_the_warm_one() -> None:
    services = {s.name: s for s in build(stack(**TWO))}
    assert services["cluster"].argv[:3] == ("prefect", "worker", "start")
    assert services["cluster"].argv[services["cluster"].argv.index("--type") + 1] == "kubernetes"
    assert services["worker-1"].argv[:3] == ("python", "-m", "prefectstack.warm.worker")
    assert services["pools"].argv[3:] == ("default", "pods:kubernetes:prefectstack")


def test_only_kubernetes_runs_kubernetes_pools() -> None:
    with pytest.raises(StackError, match=r"cluster.*Docker Compose cannot run"):
        check_target(stack(**TWO), "Docker Compose")
    with pytest.raises(StackError, match="`prefectstack up` cannot run"):
        check_target(stack(**TWO), "`prefectstack up`")
    check_target(stack(**TWO), "kubernetes")
    check_target(stack(), "Docker Compose")


def test_the_model_refuses_what_a_kubernetes_pool_cannot_do() -> None:
    with pytest.raises(ValidationError, match="preload"):
        stack(workers=[{"name": "c", "pool": "pods", "type": "kubernetes",
                        "preload": ["pandas"]}])
    with pytest.raises(ValidationError, match="pool pods has workers of different types"):
        stack(workers=[{"name": "a", "pool": "pods"},
                       {"name": "b", "pool": "pods", "type": "kubernetes"}])
    # The examples' flows are files beside a process worker.
    with pytest.raises(ValidationError, match="no `process` worker"):
        stack(workers=TWO["workers"], examples={"pool": "pods"})
    with pytest.raises(ValidationError, match=r"examples\.enabled: false"):
        stack(workers=[TWO["workers"][1]], examples={"enabled": True})
    # Left at its default, the examples are simply not registered without a process worker.
    only_cluster = stack(workers=[TWO["workers"][1]])
    assert "examples" not in {s.name for s in build(only_cluster)}


def test_a_kubernetes_pool_sends_its_runs_to_the_stacks_namespace_without_a_token() -> None:
    body = pools.pool_body(*pools.parse("pods:kubernetes:analytics"))
    assert body["name"] == "pods" and body["type"] == "kubernetes"
    template = body["base_job_template"]
    props = template["variables"]["properties"]
    assert props["namespace"]["default"] == "analytics"  # Prefect's default: `default`
    assert props["service_account_name"]["default"] == "analytics-flow-run"
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["metadata"]["labels"] == {"app.kubernetes.io/component": "flow-run",
                                         "app.kubernetes.io/instance": "analytics"}
    # The templated parts Prefect fills in are kept.
    assert pod["spec"]["containers"][0]["image"] == "{{ image }}"


def test_pool_arguments() -> None:
    assert pools.parse("default") == ("default", "process", None)
    assert pools.parse("a:kubernetes:ns") == ("a", "kubernetes", "ns")
    for bad in ("a:kubernetes", "a::ns", "a:b:c:d"):
        with pytest.raises(StackError, match="NAME or NAME:TYPE:NAMESPACE"):
            pools.parse(bad)
    with pytest.raises(StackError, match="needs its namespace"):
        pools.pool_body("a", "kubernetes")
    assert pools.pool_body("a")["base_job_template"]["variables"]["properties"].get(
        "namespace") is None
