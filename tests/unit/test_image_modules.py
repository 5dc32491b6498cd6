"""Every prefectstack module a container runs (`python -m prefectstack.X` in a rendered
stack), and every prefectstack module those import, ships in the image (render/dockerfile.py
PACKAGE_FILES; Kubernetes mounts the same files). The pools one-shot imported prefect_api,
which the image lacked: its Job would have failed with ModuleNotFoundError."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import prefectstack
from prefectstack.render import containers
from prefectstack.render.dockerfile import PACKAGE_FILES
from prefectstack.stack.model import CURRENT_VERSION, Stack

PACKAGE = Path(prefectstack.__file__).parent
STACKS: list[dict[str, Any]] = [
    {}, {"monitoring": {"enabled": True}, "api": {"replicas": 2}},
    {"edge": {"enabled": False}},
    {"workers": [{"name": "w", "pool": "p"}, {"name": "k", "pool": "k", "type": "kubernetes"}]},
]


def shipped(path: str) -> bool:
    return any(path == f or (f.endswith("/") and path.startswith(f)
                             and "/" not in path[len(f):]) for f in PACKAGE_FILES)


def file_of(module: str) -> str | None:
    rel = "/".join(module.split(".")[1:])
    for candidate in (f"{rel}.py", f"{rel}/__init__.py"):
        if (PACKAGE / candidate).exists():
            return candidate
    return None


def imports(path: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse((PACKAGE / path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("prefectstack"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("prefectstack")}
    return {f for m in out if (f := file_of(m))}


def test_what_containers_run_and_import_is_in_the_image() -> None:
    run: set[str] = set()
    for extra in STACKS:
        plan = containers.build(Stack.model_validate({"version": CURRENT_VERSION, **extra}))
        for c in plan.containers:
            args = list(c.command)
            if "-m" in args and args[args.index("-m") + 1].startswith("prefectstack"):
                found = file_of(args[args.index("-m") + 1])
                assert found, c.command
                run.add(found)
    assert "jobs/pools.py" in run and "jobs/api_server.py" in run
    missing: dict[str, set[str]] = {}
    todo, seen = list(run), set(run)
    while todo:
        path = todo.pop()
        if not shipped(path):
            missing.setdefault(path, set())
        for dep in imports(path):
            if not shipped(dep) and not dep.endswith("__init__.py"):
                missing.setdefault(dep, set()).add(path)
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    assert not missing, f"not in the image (imported by): {missing}"
