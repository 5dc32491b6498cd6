"""`${VAR}` and `${VAR:-default}` in string values of a parsed stack file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from prefectstack.errors import StackError

# A reference, an escaped `$`, or (last) any other `${`: one not closed or not well formed.
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$|\$\{")


def yaml_path(loc: tuple[str | int, ...]) -> str:
    """`("workers", 0, "pool")` -> `workers[0].pool`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def interpolate(data: Any, env: Mapping[str, str], loc: tuple[str | int, ...] = ()) -> Any:
    """Replace environment references in every string of `data`; `$$` is a literal `$`."""
    if isinstance(data, dict):
        return {k: interpolate(v, env, (*loc, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, (*loc, i)) for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(0) == "${":
            rest = data[match.start():]
            end = rest.find("}")
            shown = rest[: end + 1] if 0 <= end < 40 else re.split(r"\s", rest[:40])[0]
            raise StackError(
                f"{yaml_path(loc)}: "
                + (f"`{shown}` is not a valid environment reference" if end >= 0
                   else f"`{shown}` is not closed: a `}}` is missing"),
                hint="write ${NAME} or ${NAME:-default} (NAME: letters, digits and _, not "
                "starting with a digit); for a literal `${`, write `$${`",
                exit_code=2,
            )
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise StackError(
            f"{yaml_path(loc)}: environment variable {name} is not set",
            hint=f"export {name}=... or write ${{{name}:-default}} in the stack file",
            exit_code=2,
        )

    return _REF.sub(replace, data)
