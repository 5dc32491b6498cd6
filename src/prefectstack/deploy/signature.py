"""A flow's name and parameter schema, read from its source file, and parameter checks.

Prefect's own helpers do the reading (`load_flow_arguments_from_entrypoint` for the flow's
name, `parameter_schema_from_entrypoint` for the schema the UI and the server use), from the
source text: the flow module is parsed, not run, so planning needs neither the flow's
dependencies nor trust in its import-time code.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefectstack.errors import StackError
from prefectstack.stack.deployments import ScheduleConfig


@dataclass(frozen=True)
class FlowSignature:
    name: str  # the flow's name (the `@flow(name=...)`, else the function's, dashed)
    function: str
    schema: dict[str, Any]  # OpenAPI parameter schema, as Prefect stores it on the deployment
    var_keyword: str | None  # the `**kwargs` parameter, which accepts any name

    @property
    def parameters(self) -> list[str]:
        return [p for p in self.schema.get("properties", {}) if p != self.var_keyword]


def inspect_flow(root: Path, entrypoint: str, where: str) -> FlowSignature:
    from prefect.flows import load_flow_arguments_from_entrypoint
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    rel, _, function = entrypoint.rpartition(":")
    file = root / rel
    if not file.is_file():
        raise StackError(f"{where}.entrypoint: no file {rel} in {root}", exit_code=2)
    try:
        source = file.read_text()
        var_keyword = _var_keyword(ast.parse(source), function)
        full = f"{file}:{function}"
        name = str(load_flow_arguments_from_entrypoint(full, {"name"})["name"])
        schema: dict[str, Any] = parameter_schema_from_entrypoint(full).model_dump_for_openapi()
    except (SyntaxError, ValueError, LookupError, OSError) as exc:
        raise StackError(f"{where}.entrypoint: cannot read `{entrypoint}`: {exc}",
                         exit_code=2) from None
    return FlowSignature(name, function, schema, var_keyword)


def _var_keyword(module: ast.Module, function: str) -> str | None:
    *owners, leaf = function.split(".")
    body: list[ast.stmt] = module.body
    for owner in owners:
        cls = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == owner), None)
        if cls is None:
            raise LookupError(f"no class `{owner}`")
        body = cls.body
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == leaf:
            return node.args.kwarg.arg if node.args.kwarg else None
    raise LookupError(f"no function `{function}`")


def parameter_errors(
    flow: FlowSignature, parameters: dict[str, Any], schedules: list[ScheduleConfig],
    where: str,
) -> list[str]:
    """Every way these parameters would fail the flow, each naming its YAML path."""
    from prefect.utilities.schema_tools import validate

    errors: list[str] = []
    sets = [(f"{where}.parameters", parameters)] + [
        (f"{where}.schedules[{i}].parameters", s.parameters) for i, s in enumerate(schedules)
    ]
    takes = ", ".join(flow.parameters) or "no parameters"
    for path, values in sets:
        if flow.var_keyword is None:
            errors += [
                f"{path}.{name}: flow `{flow.function}` has no parameter `{name}` "
                f"(it takes: {takes})"
                for name in values if name not in flow.parameters
            ]
        known = {k: v for k, v in values.items() if k in flow.parameters}
        for err in validate(known, flow.schema, ignore_required=True):
            at = ".".join(str(p) for p in err.path)
            errors.append(f"{path}{'.' + at if at else ''}: {err.message}")
    required = [p for p in flow.schema.get("required", []) if p != flow.var_keyword]
    for i, schedule in enumerate(schedules):
        given = {**parameters, **schedule.parameters}
        missing = [p for p in required if p not in given]
        if missing:
            errors.append(
                f"{where}.schedules[{i}]: scheduled runs would have no value for required "
                f"parameter(s) {', '.join(missing)}; set them in `parameters`"
            )
    return errors
