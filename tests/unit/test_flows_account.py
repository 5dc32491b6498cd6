"""Flows never run as the platform's owner: the pure parts (the worker's account, what a worker
sees in its environment, the Python mirror's plan, per-service programs and TMPDIRs)."""

from __future__ import annotations

from pathlib import Path

from prefectstack import topology
from prefectstack.accounts import flows_account
from prefectstack.layout import Layout
from prefectstack.runtime import programs, python_mirror, unprivileged
from prefectstack.stack.loader import parse_stack
from prefectstack.topology import placeholders

STACK = """\
version: 1
workers:
  - name: worker-1
    pool: p
"""


def services(text: str = STACK) -> dict[str, topology.Service]:
    return {s.name: s for s in topology.build(parse_stack(text, {}, "stack.yaml"))}


def test_workers_run_as_an_account_of_their_own() -> None:
    svcs = services()
    assert svcs["worker-1"].run_as == "prefectstack-flows" == flows_account("prefectstack")
    assert svcs["postgres"].run_as == "prefectstack"
    assert svcs["worker-1"].run_as != svcs["postgres"].run_as


def test_a_workers_environment_holds_only_the_worker_key() -> None:
    """No database or Redis password, no API auth string: flows see what a worker key can
    do, and nothing more."""
    svc = services()["worker-1"]
    texts = [*svc.env.values(), *svc.public_edge_env.values(), *programs.argv(svc)]
    assert placeholders.secret_names(texts) == {"worker_api_key"}
    assert not any(k.startswith(("PREFECT_SERVER_", "PREFECT_REDIS")) or "DATABASE" in k
                   for k in svc.env if k != "PREFECT_SERVER_ANALYTICS_ENABLED")


def test_program_paths_of_one_service_apply_to_it_alone() -> None:
    svcs = services()
    paths = {"caddy": "/c"} | programs.for_service("worker-1", {"prefect": "/m/prefect"})
    assert programs.paths_for(svcs["worker-1"], paths) == {"caddy": "/c", "prefect": "/m/prefect"}
    assert programs.paths_for(svcs["api-1"], paths) == {"caddy": "/c"}


def test_python_services_get_a_tmpdir_of_their_own() -> None:
    svcs = services()
    assert programs.tmp_dir(svcs["worker-1"]) == "tmp/worker-1"
    assert programs.tmp_dir(svcs["api-1"]) == "tmp/api-1"
    assert programs.tmp_dir(svcs["postgres"]) is None


PREFIX = Path("/root/.pyenv/versions/3.11.7")
SITE = PREFIX / "lib/python3.11/site-packages"


def base_install() -> python_mirror.Installation:
    return python_mirror.Installation(
        executable=PREFIX / "bin/python3.11", base_prefix=PREFIX, prefix=PREFIX,
        site_dirs=(SITE,), shared_libdir=PREFIX / "lib")


def nothing_reachable(_path: Path) -> bool:
    return False


def test_the_mirror_links_the_lib_tree_and_the_interpreter() -> None:
    p = python_mirror.plan(base_install(), {}, nothing_reachable)
    assert p.trees == ((PREFIX / "lib", "./lib"), (PREFIX / "bin/python3.11", "./bin/python3.11"))
    assert p.interpreter == "./bin/python3.11"
    assert p.libdir == "./lib"  # libpython, found through LD_LIBRARY_PATH
    assert not p.copies and not p.pth


def test_an_unreachable_editable_source_is_copied_and_its_pth_rewritten() -> None:
    pth = {SITE / "__editable__.x.pth": "/root/src/x\n",
           SITE / "other.pth": "import something\n/opt/open\n",
           SITE / "distutils-precedence.pth": "# comment\n"}
    p = python_mirror.plan(base_install(), pth,
                           lambda path: str(path).startswith("/opt"))
    assert p.copies == ((Path("/root/src/x"), "paths/0"),)
    assert p.pth == {"./lib/python3.11/site-packages/__editable__.x.pth": "{mirror}/paths/0\n"}


def test_a_virtualenv_is_mirrored_beside_its_base() -> None:
    venv = Path("/root/venv")
    inst = python_mirror.Installation(
        executable=PREFIX / "bin/python3.11", base_prefix=PREFIX, prefix=venv,
        site_dirs=(venv / "lib/python3.11/site-packages",))
    p = python_mirror.plan(inst, {}, nothing_reachable)
    assert (venv / "lib", "venv/lib") in p.trees
    assert p.interpreter == "venv/bin/python3.11"
    assert p.links == (("venv/bin/python3.11", "../../base/bin/python3.11"),)
    assert p.venv_cfg is not None and "home = {mirror}/base/bin" in p.venv_cfg[1]
    assert p.libdir is None


def test_no_mirror_when_the_account_reaches_the_installation(tmp_path: Path) -> None:
    exe = tmp_path / "bin/python3"
    exe.parent.mkdir()
    exe.write_text("")
    inst = python_mirror.Installation(executable=exe, base_prefix=tmp_path, prefix=tmp_path,
                                      site_dirs=())
    assert not python_mirror.needed(inst, {}, lambda _p: True)
    assert python_mirror.needed(inst, {}, nothing_reachable)


def test_launchers_set_the_library_path_and_quote_paths() -> None:
    p = python_mirror.plan(base_install(), {}, nothing_reachable)
    scripts = python_mirror.launchers(Path("/state dir/runtime/python"), p)
    assert scripts["prefect"].startswith("#!/bin/sh\nLD_LIBRARY_PATH='/state dir/runtime/python/")
    assert scripts["prefect"].endswith(
        "exec '/state dir/runtime/python/bin/python3.11' -m prefect \"$@\"\n")
    assert "-m prefect" not in scripts["python"]


def test_each_start_gets_a_private_tmpdir_in_the_state_dir(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "state")
    svcs = services()
    env = unprivileged.launch_env(svcs["worker-1"], layout, {"TMPDIR": "/tmp"}, None)
    tmp = layout.root / "tmp" / "worker-1"
    assert env["TMPDIR"] == str(tmp)
    assert tmp.is_dir() and tmp.stat().st_mode & 0o777 == 0o700
    assert "HOME" not in env  # run as the supervisor's own account: its HOME stays
    assert "TMPDIR" not in unprivileged.launch_env(svcs["postgres"], layout, {}, None)
