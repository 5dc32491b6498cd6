"""`prefectstack --help` stays fast: registering the commands imports no heavy module.
Each command imports what it needs (the stack model, the runtime, Prefect's client) when
it runs. `python scripts/bench_cli.py` measures the wall time."""

from __future__ import annotations

import json
import subprocess
import sys

# Not imported by registering the commands.
HEAVY = (
    "httpx", "psutil", "rich", "prefectstack.prefect_api", "prefectstack.tools",
    "pydantic", "yaml", "prefect", "uvicorn", "starlette", "fastapi", "sqlalchemy", "argon2",
    "sqlite3", "prefectstack.stack", "prefectstack.topology", "prefectstack.render",
    "prefectstack.deploy", "prefectstack.auth.store", "prefectstack.auth.app",
    "prefectstack.runtime.local", "prefectstack.runtime.compose",
)


def test_registering_the_commands_imports_no_heavy_module() -> None:
    code = "import json, sys, prefectstack.cli; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = json.loads(proc.stdout)
    found = [name for name in loaded
             if any(name == heavy or name.startswith(f"{heavy}.") for heavy in HEAVY)]
    assert found == []
