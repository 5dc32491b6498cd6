"""Names of the secret values a stack's services need (the keys of `secrets.json`, the
`${secret.NAME}` placeholders). Generated once by the backend, never printed but once."""

from __future__ import annotations

POSTGRES_PASSWORD = "postgres_password"
POSTGRES_SUPERUSER_PASSWORD = "postgres_superuser_password"
REDIS_PASSWORD = "redis_password"
ADMIN_PASSWORD = "admin_password"
WORKER_API_KEY = "worker_api_key"
DEPLOYER_API_KEY = "deployer_api_key"
# The password of Prefect's own server auth (PREFECT_SERVER_API_AUTH_STRING): the API
# processes answer nothing but their probes without it, so a local user can't bypass the
# edge through their loopback ports. Only the edge's auth service (after its own checks),
# the stack's processes and, without an edge, the stack's clients hold it.
API_PASSWORD = "api_password"
API_USER = "prefectstack"
# What the edge adds to every request it sends to the auth service (X-Prefectstack-Edge):
# the auth service answers nothing but its sign-in page without it, so a local user can't
# ask `/auth/verify` for the API's own credentials or choose the X-Forwarded-For address
# it is throttled and audited under.
EDGE_SECRET = "edge_secret"
# What a backup job that cannot read the auth store's volume (Kubernetes' CronJob) shows to
# fetch an online copy from the auth service (`GET /auth/backup`, auth/store_backup.py).
AUTH_BACKUP_TOKEN = "auth_backup_token"

# The auth store's name for each of the stack's own keys (also the label in the auth string)
# and the role it has.
SERVICE_KEYS = {
    WORKER_API_KEY: ("stack-worker", "worker"),
    DEPLOYER_API_KEY: ("stack-deployer", "developer"),
}


def is_api_key(name: str) -> bool:
    return name.endswith("_api_key")
