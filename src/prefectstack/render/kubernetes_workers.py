"""Workers of `kubernetes` pools (issue 13, item 14): Prefect's Kubernetes worker, which
runs each flow run as a Job (a pod per run), as the prefect-worker chart does by default.

- The worker runs the published `prefecthq/prefect:<version>-python<py>-kubernetes` image
  (Prefect with prefect-kubernetes), whatever `--image` says: it runs no code of ours.
- Its pod, alone in the stack, has a service-account token: its account's Role may manage
  Jobs and read their pods, logs and events in the stack's namespace, and nothing else
  (the chart's rules; no Secrets, no other namespace, no cluster-wide read).
- The flow-run pods run under an account with no rights and no token, in the stack's
  namespace, labelled as the stack's (jobs/pools.py writes this into the pool's base job
  template when it creates the pool). Their Prefect credentials are the worker's, passed in
  the Job's environment as Prefect's Kubernetes worker does: whoever may read Jobs in the
  namespace may read them, so give that right to nobody else.
"""

from __future__ import annotations

from typing import Any

from prefectstack.layout import flow_run_account, kubernetes_worker_account
from prefectstack.render.common import PREFECT_BASE_IMAGE

IMAGE = f"{PREFECT_BASE_IMAGE}-kubernetes"
FILE = "kubernetes-workers.yaml"

# prefect-worker chart (templates/role.yaml), plus `get` on Jobs for the readiness wait.
RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods", "pods/log", "pods/status"],
     "verbs": ["get", "watch", "list"]},
    {"apiGroups": ["batch"], "resources": ["jobs"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
]


def objects(namespace: str, meta: Any) -> list[dict[str, Any]]:
    """The two accounts, the worker's Role and its binding. `meta(name)`: the stack's
    metadata for an object."""
    worker = kubernetes_worker_account(namespace)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(worker),
         "automountServiceAccountToken": False},  # only the worker's pod asks for one
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(worker),
         "rules": RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": meta(worker),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": worker},
         "subjects": [{"kind": "ServiceAccount", "name": worker, "namespace": namespace}]},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": meta(flow_run_account(namespace)),
         "automountServiceAccountToken": False},
    ]


def pod_settings(namespace: str) -> dict[str, Any]:
    """What a Kubernetes worker's pod spec gets: its account, and that account's token."""
    return {"serviceAccountName": kubernetes_worker_account(namespace),
            "automountServiceAccountToken": True}
