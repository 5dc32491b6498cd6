"""`prefectstack render compose|kubernetes|systemd|github-actions`: write the stack for
another target. The renderers are pure; this module writes their files (atomically) and
runs `docker compose` for `prefectstack up --backend compose`."""

from __future__ import annotations

import getpass
import os
import shutil
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import click

from prefectstack import console, tools
from prefectstack.cli.options import stack_file
from prefectstack.errors import StackError
from prefectstack.render import Bundle, compose, github_actions, kubernetes, systemd
from prefectstack.runtime import secrets
from prefectstack.stack.loader import LoadedStack, load_stack


def write_bundle(bundle: Bundle, out_dir: Path) -> list[Path]:
    """Write every file of `bundle` under `out_dir`; returns the paths written."""
    written: list[Path] = []
    for rel, text in bundle.files.items():
        mode = 0o600 if rel in bundle.private else 0o644
        written.append(_write_atomic(out_dir / rel, text, mode))
    for rel, text in bundle.seeds.items():
        if not (out_dir / rel).exists():
            written.append(_write_atomic(out_dir / rel, text, 0o644))
    package = resources.files("prefectstack")
    for rel, source in bundle.copies.items():
        if source.endswith("/"):
            pairs = [(f"{rel}{item.name}", item) for item in package.joinpath(source).iterdir()
                     if item.name.endswith(".py")]
        else:
            pairs = [(rel, package.joinpath(source))]
        for dest, item in sorted(pairs, key=lambda pair: pair[0]):
            written.append(_write_atomic(out_dir / dest, item.read_text(), 0o644))
    return written


def _write_atomic(path: Path, text: str, mode: int) -> Path:
    """tmp + rename: a reader never sees half a file, and a private file is never, even
    briefly, readable by others (its mode is set when it is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask; an old tmp kept its own
    os.replace(tmp, path)
    return path


def _rendered(build: Callable[[], Bundle]) -> Bundle:
    try:
        return build()
    except ValueError as exc:
        raise StackError(f"cannot render the stack: {exc}") from None


def _out_dir(loaded: LoadedStack, option: str | None, default: str) -> Path:
    return Path(option) if option else loaded.base_dir / default


def _report(target: str, out_dir: Path, written: list[Path], private: list[str]) -> None:
    count = f"{len(written)} file" + ("s" if len(written) != 1 else "")
    console.out(f"rendered {target}: {count} in {out_dir}")
    for rel in private:
        console.out(f"  {rel} holds secrets (mode 0600): keep it out of version control")


def write_compose(loaded: LoadedStack, out_dir: Path) -> list[Path]:
    stack = loaded.stack
    values = secrets.ensure(loaded.state_dir, compose.secret_names(stack))
    bundle = _rendered(lambda: compose.render(stack, values))
    return write_bundle(bundle, out_dir)


def check_docker() -> str:
    """The docker CLI, once we know it reaches an engine and has the compose plugin."""
    docker = shutil.which("docker")
    if docker is None:
        raise StackError("docker is not installed",
                         hint="install Docker Engine, or use the local backend: prefectstack up")
    try:
        tools.run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=30)
    except StackError as exc:
        raise StackError(
            "no Docker engine is reachable (`docker info` failed: "
            f"{exc.message.splitlines()[-1].strip()})",
            hint="start the Docker daemon (e.g. sudo systemctl start docker), or use the "
                 "local backend: prefectstack up",
        ) from None
    try:
        tools.run([docker, "compose", "version"], timeout=30)
    except StackError:
        raise StackError("the Docker Compose plugin is missing (`docker compose version` failed)",
                         hint="install docker-compose-plugin") from None
    return docker


def run_compose(out_dir: Path) -> None:
    """`docker compose up -d --build` in a rendered project directory."""
    docker = check_docker()
    console.event(f"docker compose up -d --build in {out_dir}")
    # -f: compose then takes the file's directory as the project directory (and its .env).
    tools.run([docker, "compose", "-f", str(out_dir / "docker-compose.yml"), "up", "-d",
               "--build"], timeout=3600)
    console.event("started; `docker compose ps` shows health, `docker compose logs -f` logs")


def up_compose(loaded: LoadedStack, out_dir: Path | None = None) -> Path:
    """`prefectstack up --backend compose`: render into the state dir, then start it."""
    check_docker()  # fail before writing anything when there is no engine
    target = out_dir or loaded.state_dir / "compose"
    write_compose(loaded, target)
    run_compose(target)
    return target


@click.group()
def render() -> None:
    """Write the stack for another target: Docker Compose, Kubernetes, systemd, CI."""


output = click.option("-o", "--output", "out", type=click.Path(file_okay=False), default=None,
                      help="Output directory.")


@render.command("compose")
@stack_file
@output
def render_compose(stack_path: str | None, out: str | None) -> None:
    """docker-compose.yml, Caddyfile, .env, Dockerfile and README (default: deploy/compose)."""
    loaded = load_stack(stack_path)
    out_dir = _out_dir(loaded, out, "deploy/compose")
    written = write_compose(loaded, out_dir)
    _report("Docker Compose", out_dir, written, [".env"])
    console.out(f"  start: cd {out_dir} && docker compose up -d --build")


@render.command("kubernetes")
@stack_file
@output
@click.option("--image", default=None, metavar="REF",
              help="Image the cluster pulls for Prefect processes (default: the compose tag).")
def render_kubernetes(stack_path: str | None, out: str | None, image: str | None) -> None:
    """Plain manifests for `kubectl apply -k` (default: deploy/kubernetes)."""
    loaded = load_stack(stack_path)
    out_dir = _out_dir(loaded, out, "deploy/kubernetes")
    values = secrets.ensure(loaded.state_dir, kubernetes.secret_names(loaded.stack))
    bundle = _rendered(lambda: kubernetes.render(loaded.stack, values, image=image))
    written = write_bundle(bundle, out_dir)
    _report("Kubernetes manifests", out_dir, written, sorted(bundle.private))
    console.out(f"  apply: kubectl apply -k {out_dir}")


@render.command("systemd")
@stack_file
@output
@click.option("--user", default=None, help="Account the service runs as (default: you).")
def render_systemd(stack_path: str | None, out: str | None, user: str | None) -> None:
    """A systemd unit that runs `prefectstack up` on this machine (default: deploy/systemd)."""
    loaded = load_stack(stack_path)
    out_dir = _out_dir(loaded, out, "deploy/systemd")
    found = shutil.which("prefectstack")
    executable = str(Path(found).resolve()) if found else f"{sys.executable} -m prefectstack"
    file = Path(stack_path) if stack_path else loaded.base_dir / "stack.yaml"
    bundle = systemd.render(
        loaded.stack, executable=executable,
        stack_file=str(file.resolve()) if file.exists() else None,
        working_dir=str(loaded.base_dir), state_dir=str(loaded.state_dir),
        user=user or getpass.getuser(),
    )
    written = write_bundle(bundle, out_dir)
    _report("systemd unit", out_dir, written, [])
    unit = systemd.unit_name(loaded.stack)
    console.out(f"  install: sudo cp {out_dir / unit} /etc/systemd/system/ && "
                f"sudo systemctl enable --now {unit}")


@render.command("github-actions")
@stack_file
@output
@click.option("--context", default="deploy/compose", show_default=True,
              help="Directory of `render compose` output, relative to the repository root.")
def render_github_actions(stack_path: str | None, out: str | None, context: str) -> None:
    """A workflow that builds the flows image and applies deployments on a tag
    (default: .github/workflows)."""
    loaded = load_stack(stack_path)
    out_dir = _out_dir(loaded, out, ".github/workflows")
    name = Path(stack_path).name if stack_path else "stack.yaml"
    bundle = github_actions.render(loaded.stack, stack_file=name, context=context)
    written = write_bundle(bundle, out_dir)
    _report("GitHub Actions workflow", out_dir, written, [])


COMMANDS = [render]
