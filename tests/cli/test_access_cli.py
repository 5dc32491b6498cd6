"""`users` and `keys` on a stack's auth store, without a running stack: every change made
from the command line lands in the audit log, without the secret it printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "prefectstack", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("PREFECT_")})
    assert result.returncode == 0, result.stderr
    return result


def test_cli_changes_to_users_and_keys_are_audited(tmp_path: Path) -> None:
    (tmp_path / "stack.yaml").write_text("version: 1\nname: access\n")
    key = run("keys", "create", "ci", "--role", "developer", cwd=tmp_path).stdout.split()[-1]
    run("keys", "revoke", key[:12], cwd=tmp_path)
    run("users", "add", "alice", "--role", "operator", cwd=tmp_path)
    run("users", "remove", "alice", cwd=tmp_path)
    records = json.loads(run("audit", "--json", cwd=tmp_path).stdout)
    actions = [r["path"] for r in records]
    assert actions == ["keys create ci --role developer", f"keys revoke {key[:12]}",
                       "users add alice --role operator", "users remove alice"]
    assert all(r["method"] == "CLI" and r["identity"].startswith("cli:") for r in records)
    assert records[0]["key_prefix"] == key[:12]
    log = (tmp_path / ".prefectstack" / "data" / "auth" / "audit.log").read_text()
    assert key not in log, "the key itself is never written"


def test_a_worker_key_serves_the_pools_it_was_given(tmp_path: Path) -> None:
    (tmp_path / "stack.yaml").write_text("version: 1\nname: access\n")
    scoped = run("keys", "create", "gpu-box", "--role", "worker", "--pool", "gpu", "--pool",
                 "cpu", cwd=tmp_path)
    assert "work pools cpu, gpu" in scoped.stdout and not scoped.stderr
    anywhere = run("keys", "create", "any-box", "--role", "worker", cwd=tmp_path)
    assert "serves every work pool: give it --pool" in anywhere.stderr  # a nudge, not an error
    listed = {k["name"]: k["pools"] for k in json.loads(
        run("keys", "list", "--json", cwd=tmp_path).stdout)}
    assert listed == {"gpu-box": ["cpu", "gpu"], "any-box": None}
    table = run("keys", "list", cwd=tmp_path).stdout
    assert "cpu, gpu" in table and "any" in table
    refused = subprocess.run([sys.executable, "-m", "prefectstack", "keys", "create", "ops",
                              "--role", "operator", "--pool", "gpu"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "only a worker key serves work pools" in refused.stderr
    assert "Traceback" not in refused.stderr
    records = json.loads(run("audit", "--json", cwd=tmp_path).stdout)
    assert records[0]["path"] == "keys create gpu-box --role worker --pool cpu --pool gpu"
