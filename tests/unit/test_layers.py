"""The import graph goes one way: each part of the package imports only parts below it, and
no modules import each other in a circle (checked on the source, with `ast`)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import prefectstack

PACKAGE = Path(prefectstack.__file__).parent

# Bottom to top. A part may import its own modules and any part of a lower layer; parts of
# the same layer are independent of each other.
LAYERS: list[set[str]] = [
    {"__init__", "errors", "urls", "layout", "apikeys", "lock", "accounts"},  # leaves
    {"console", "tools"},  # the terminal and subprocess chokepoints
    {"stack"},  # stack.yaml -> Stack
    {"topology"},  # Stack -> services
    {"render"},  # services -> files for other targets
    {"auth", "prefect_api", "flows"},  # the auth service, Prefect's API, the flow library
    {"jobs", "warm"},  # one-shot programs the stack runs; the warm worker
    {"runtime"},  # backends: processes on this host, docker compose
    {"deploy"},  # deployments as code (plan/apply)
    {"cli"},  # commands
    {"__main__"},  # `python -m prefectstack`
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def imports(path: Path, *, top_level_only: bool) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "prefectstack" or node.module.startswith("prefectstack."):
                # Each name may be a submodule or an attribute of the module: both are
                # yielded, and the caller keeps what names a module.
                yield node.module
                yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("prefectstack."))


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_part_has_a_layer() -> None:
    unknown = {part(m) for m in modules()} - LAYER.keys()
    assert not unknown, f"add these to LAYERS: {sorted(unknown)}"


def test_no_part_imports_a_part_above_it_or_beside_it() -> None:
    wrong = []
    for name, path in modules().items():
        source = part(name)
        for target in imports(path, top_level_only=False):
            dest = part(target)
            if dest == source:
                continue
            if LAYER.get(dest, -1) >= LAYER[source]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles_between_modules() -> None:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set(imports(path, top_level_only=True))
        # `from prefectstack.x import y`: an edge to the module x.y when y is one, else to x.
        found = {t for t in targets if t in known and not any(
            other.startswith(t + ".") and other in known for other in targets)}
        graph[name] = {t for t in found if t != name}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dest in graph[node]:
            if state.get(dest) == 1:
                cycle = [*stack[stack.index(dest):], dest]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dest not in state:
                visit(dest)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
