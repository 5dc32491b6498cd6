"""How long an API key lives, as `prefectstack keys create` and the in-pod admin tool
(auth/admin.py) both take it: `--expires-in 30m|12h|90d|4w`."""

from __future__ import annotations

import re

from prefectstack.errors import StackError

_DURATION = re.compile(r"^(\d+)([mhdw])$")
_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds, from `30m`, `12h`, `90d` or `4w`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise StackError(f"cannot read duration {text!r}", hint="use e.g. 30m, 12h, 90d, 4w",
                         exit_code=2)
    return int(match.group(1)) * _SECONDS[match.group(2)]
