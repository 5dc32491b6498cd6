"""Names of the secret values a stack's services need (the keys of `secrets.json`, the
`${secret.NAME}` placeholders). Generated once by the backend, never printed but once."""

from __future__ import annotations

POSTGRES_PASSWORD = "postgres_password"
POSTGRES_SUPERUSER_PASSWORD = "postgres_superuser_password"
REDIS_PASSWORD = "redis_password"
ADMIN_PASSWORD = "admin_password"
WORKER_API_KEY = "worker_api_key"
DEPLOYER_API_KEY = "deployer_api_key"

# The auth store's name for each of the stack's own keys (also the label in the auth string)
# and the role it has.
SERVICE_KEYS = {
    WORKER_API_KEY: ("stack-worker", "worker"),
    DEPLOYER_API_KEY: ("stack-deployer", "developer"),
}


def is_api_key(name: str) -> bool:
    return name.endswith("_api_key")
