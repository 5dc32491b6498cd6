"""The topology's one placeholder syntax, `${kind.name}`: built here and parsed here.

Values that differ per target stay symbolic in the topology, and each backend resolves them:
- `${secret.NAME}`  a secret value (the local backend reads the 0600 store; compose renders
  it into `.env`; Kubernetes into a Secret), never a literal;
- `${dir.NAME}`     a data directory (local: under the state dir; containers: a volume path);
- `${path.NAME}`    a path on the host that runs the stack (`flows`: the flow files);
- `${addr.SERVICE}` where other services reach SERVICE (`host:port`);
- `${port.SERVICE}` the port SERVICE listens on, as SERVICE itself sees it;
- `${bind.host}`    the address a server binds (local: loopback; a container: all of its own);
- `${url.edge}`     the edge's address for the stack's own clients (local: its public URL;
  containers: its private plain-HTTP listener).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Literal

Kind = Literal["secret", "dir", "path", "addr", "port", "bind", "url"]

_PLACEHOLDER = re.compile(r"\$\{(secret|dir|path|addr|port|bind|url)\.([A-Za-z0-9_-]+)\}")


def _make(kind: Kind, name: str) -> str:
    return "${" + kind + "." + name + "}"


def secret(name: str) -> str:
    return _make("secret", name)


def directory(name: str) -> str:
    return _make("dir", name)


def host_path(name: str) -> str:
    return _make("path", name)


def address(service: str) -> str:
    return _make("addr", service)


def port(service: str) -> str:
    return _make("port", service)


BIND_HOST = _make("bind", "host")
EDGE_URL = _make("url", "edge")

Resolve = Callable[[str, str], str]
"""(kind, name) -> the value on one target"""


def substitute(text: str, resolve: Resolve, escape: Callable[[str], str] = str) -> str:
    """Each placeholder becomes `resolve(kind, name)`; every other piece of text becomes
    `escape(piece)` (a target with its own interpolation syntax protects it there)."""
    out: list[str] = []
    last = 0
    for match in _PLACEHOLDER.finditer(text):
        out.append(escape(text[last:match.start()]))
        out.append(resolve(match.group(1), match.group(2)))
        last = match.end()
    out.append(escape(text[last:]))
    return "".join(out)


def names(text: str, kind: Kind) -> list[str]:
    """The names of the `kind` placeholders in `text`, in order."""
    return [name for k, name in _PLACEHOLDER.findall(text) if k == kind]


def secret_refs(text: str) -> list[str]:
    """Names of the `${secret.NAME}` placeholders in `text`, in order."""
    return names(text, "secret")


def secret_names(texts: Iterable[str]) -> set[str]:
    return {name for text in texts for name in names(text, "secret")}


def is_secret(text: str) -> bool:
    """The whole text is one secret placeholder."""
    match = _PLACEHOLDER.fullmatch(text)
    return match is not None and match.group(1) == "secret"


def replace_secrets(text: str, replace: Callable[[str], str], escape: Callable[[str], str]
                    ) -> str:
    """Secrets become `replace(name)`; other placeholders must already be resolved."""
    def one(kind: str, name: str) -> str:
        if kind != "secret":
            raise ValueError(f"unresolved placeholder ${{{kind}.{name}}} in {text!r}")
        return replace(name)

    return substitute(text, one, escape)
