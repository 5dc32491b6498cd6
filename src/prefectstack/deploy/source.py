"""A deployment's source: the pull step its worker runs, and a local copy of the code so the
plan can read the flow's signature.

Git sources are cloned (shallow, the declared branch or tag) into a temporary directory when
planning, with the credentials the worker will use; the clone is how parameters are checked
against the same code the worker will run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from prefectstack import tools
from prefectstack.deploy.state import GIT_CLONE, SET_WORKDIR
from prefectstack.errors import StackError
from prefectstack.stack.deployments import SourceConfig

CLONE_TIMEOUT_SECONDS = 300.0


def local_root(source: SourceConfig, base_dir: Path) -> Path:
    return (base_dir / (source.path or ".")).resolve()


def pull_steps(source: SourceConfig, base_dir: Path) -> list[dict[str, Any]]:
    """What the worker does before loading the entrypoint."""
    if source.git is None:
        return [{SET_WORKDIR: {"directory": str(local_root(source, base_dir))}}]
    args: dict[str, Any] = {"repository": source.git}
    ref = source.branch or source.tag
    if ref:
        args["branch"] = ref  # `git clone --branch` takes a tag as well
    if source.credentials:
        args["access_token"] = "{{ prefect.blocks.secret." + source.credentials + " }}"
    return [{GIT_CLONE: args}]


def checkout(
    source: SourceConfig, base_dir: Path, into: Path, token: Callable[[str], str | None],
    where: str,
) -> Path:
    """The directory holding the source's code on this machine (a fresh clone for git)."""
    if source.git is None:
        root = local_root(source, base_dir)
        if not root.is_dir():
            raise StackError(f"{where}.path: directory {root} does not exist", exit_code=2)
        return root
    env = dict(os.environ) | {"GIT_TERMINAL_PROMPT": "0"}
    value: str | None = None
    if source.credentials:
        value = token(source.credentials)
        if value is None:
            raise StackError(
                f"{where}.credentials: no Secret block `{source.credentials}` in the stack "
                "file or on the server",
                hint="declare it under `secrets`",
                exit_code=2,
            )
        env |= _credential_config(source.git, value)
    argv = ["git", "clone", "--quiet", "--depth", "1"]
    ref = source.branch or source.tag
    if ref:
        argv += ["--branch", ref]
    try:
        tools.run([*argv, source.git, str(into)], env=env, timeout=CLONE_TIMEOUT_SECONDS)
    except StackError as exc:
        message = exc.message
        for secret in filter(None, (value, value and quote(value, safe=""))):
            message = message.replace(secret, "***")  # git may echo the rewritten URL
        raise StackError(f"{where}.git: cannot clone {source.git}: {message}",
                         exit_code=2) from None
    return into


def _credential_config(url: str, token: str) -> dict[str, str]:
    """Git config (through the environment, so the token is in no command line) that
    rewrites the https URL to one with credentials, formatted as Prefect's git_clone does."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return {}
    if ":" in token:
        user, _, password = token.partition(":")
        userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}"
    elif "gitlab" in parts.netloc:
        userinfo = f"oauth2:{quote(token, safe='')}"
    else:
        userinfo = quote(token, safe="")
    authed = parts._replace(netloc=f"{userinfo}@{parts.netloc}").geturl()
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{authed}.insteadOf",
            "GIT_CONFIG_VALUE_0": url}
