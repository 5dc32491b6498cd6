"""What a started stack hands to people: the edge's CA certificate (exported for clients)
and the first admin password, shown once.

(The edge elsewhere: `stack/edge.py` is its section of the stack file, `topology/edge.py`
its services, `topology/caddyfile.py` its config, `render/kubernetes_edge.py` its pods.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefectstack.layout import Layout
from prefectstack.runtime import secret_store
from prefectstack.topology import stack_secrets


def export_ca(state_dir: Path) -> Path:
    """Copy the internal CA's root certificate (public) to `<state dir>/ca.crt`."""
    layout = Layout(state_dir)
    target, source = layout.ca_export, layout.edge_ca
    if source.exists():
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    return target


def admin_password_once(state_dir: Path) -> str | None:
    """The bootstrap admin password the first time it is asked for, then never again."""
    marker = Layout(state_dir).admin_shown_marker
    if marker.exists():
        return None
    password = secret_store.load(state_dir).get(stack_secrets.ADMIN_PASSWORD)
    if password is None:
        return None
    marker.touch(mode=0o600)
    return password
