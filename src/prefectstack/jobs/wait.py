"""Wait until a dependency is ready: `tcp HOST PORT`, `http URL` or `job NAME` (completed).

Kubernetes init containers run this file with the app image's Python: it is rendered as is
into a ConfigMap (`render/kubernetes.py`), so it imports the standard library only, and
prints its progress itself (the init container's log).
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence

ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
API = "https://kubernetes.default.svc"
INTERVAL = 3.0
USAGE = {"tcp": ("HOST", "PORT"), "http": ("URL",), "job": ("NAME",)}


def tcp(host: str, port: str) -> bool:
    socket.create_connection((host, int(port)), timeout=3).close()
    return True


def http(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bool(response.status == 200)


def job_request(name: str, account: str = ACCOUNT, api: str = API) -> urllib.request.Request:
    """Read Job `name` in this pod's namespace, as the pod's service account."""
    with open(f"{account}/namespace") as fh:
        namespace = fh.read().strip()
    with open(f"{account}/token") as fh:
        token = fh.read().strip()
    url = f"{api}/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})


def job(name: str, account: str = ACCOUNT, api: str = API) -> bool:
    request = job_request(name, account, api)
    context = ssl.create_default_context(cafile=f"{account}/ca.crt")
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return bool(json.load(response).get("status", {}).get("succeeded", 0) >= 1)


CHECKS: dict[str, Callable[..., bool]] = {"tcp": tcp, "http": http, "job": job}


def wait(kind: str, args: Sequence[str], *, interval: float = INTERVAL,
         timeout: float | None = None) -> bool:
    """Check every `interval` seconds until ready (True) or `timeout` seconds have passed
    (False; None: forever)."""
    check = CHECKS[kind]
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            if check(*args):
                print(f"ready: {kind} {' '.join(args)}", flush=True)
                return True
            problem = "not ready yet"
        except Exception as exc:  # any failure means: not ready yet, keep waiting
            problem = str(exc)
        print(f"waiting for {kind} {' '.join(args)}: {problem}", flush=True)
        if deadline is not None and time.monotonic() + interval > deadline:
            return False
        time.sleep(interval)


def main(argv: Sequence[str] | None = None) -> int:
    """`wait.py KIND ARG...`: 0 once ready; 2 on a usage error (rather than waiting forever)."""
    kind, *args = list(sys.argv[1:] if argv is None else argv) or [""]
    if kind not in USAGE or len(args) != len(USAGE[kind]):
        usage = " | ".join(" ".join([k, *a]) for k, a in USAGE.items())
        print(f"usage: wait.py {usage}", file=sys.stderr)
        return 2
    return 0 if wait(kind, args) else 1


if __name__ == "__main__":
    sys.exit(main())
