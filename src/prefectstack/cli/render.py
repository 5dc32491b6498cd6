"""`prefectstack render compose|kubernetes|systemd|github-actions`: write the stack for
another target. The renderers are pure; runtime/bundle.py writes their files (atomically)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from prefectstack import console
from prefectstack.cli.options import stack_file
from prefectstack.errors import StackError

if TYPE_CHECKING:
    from prefectstack.render import Bundle
    from prefectstack.stack.loader import LoadedStack


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


def _warn_local_only_backup(loaded: LoadedStack, target: str) -> None:
    """`backup.encrypt` and `backup.s3` are applied by the local backend only: say so, so
    nobody takes the rendered backups for encrypted or copied off the host."""
    ignored = [f"backup.{key}" for key in ("encrypt", "s3")
               if getattr(loaded.stack.backup, key, None)]
    if ignored:
        console.warn(f"{' and '.join(ignored)} {'are' if len(ignored) > 1 else 'is'} not "
                     f"applied in {target}: its backups are written unencrypted to its own "
                     "volume; copy them off the host yourself (see the rendered README)")


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
    from prefectstack.runtime.compose import write_project
    from prefectstack.stack.loader import load_stack
    from prefectstack.topology import check_target

    loaded = load_stack(stack_path)
    check_target(loaded.stack, "Docker Compose")
    out_dir = _out_dir(loaded, out, "deploy/compose")
    written = write_project(loaded, out_dir)
    _report("Docker Compose", out_dir, written, [".env"])
    _warn_local_only_backup(loaded, "Docker Compose")
    console.out(f"  start: cd {out_dir} && docker compose up -d --build")


@render.command("kubernetes")
@stack_file
@output
@click.option("--image", default=None, metavar="REF",
              help="An image built from `render compose`'s Dockerfile and pushed where the "
                   "cluster pulls it (default: the published Prefect image, with "
                   "prefectstack installed at pod start).")
@click.option("--local-image", is_flag=True, default=False,
              help="Run the compose tag (<name>-prefect:VERSION), which only a cluster "
                   "sharing the local image store can pull (kind load, minikube).")
def render_kubernetes(stack_path: str | None, out: str | None, image: str | None,
                      local_image: bool) -> None:
    """Plain manifests for `kubectl apply -k` (default: deploy/kubernetes)."""
    from prefectstack.render import kubernetes
    from prefectstack.runtime import secret_store
    from prefectstack.runtime.bundle import write_bundle
    from prefectstack.stack.loader import load_stack

    loaded = load_stack(stack_path)
    out_dir = _out_dir(loaded, out, "deploy/kubernetes")
    values = secret_store.ensure(loaded.state_dir, kubernetes.secret_names(loaded.stack))
    bundle = _rendered(lambda: kubernetes.render(loaded.stack, values, image=image,
                                                 local_image=local_image))
    written = write_bundle(bundle, out_dir)
    _report("Kubernetes manifests", out_dir, written, sorted(bundle.private))
    _warn_local_only_backup(loaded, "Kubernetes")
    console.out(f"  apply: kubectl apply -k {out_dir}")


@render.command("systemd")
@stack_file
@output
@click.option("--user", default=None, help="Account the service runs as (default: you).")
def render_systemd(stack_path: str | None, out: str | None, user: str | None) -> None:
    """A systemd unit that runs `prefectstack up` on this machine (default: deploy/systemd)."""
    import getpass
    import shutil
    import sys

    from prefectstack.render import systemd
    from prefectstack.runtime.bundle import write_bundle
    from prefectstack.stack.loader import load_stack
    from prefectstack.topology import check_target

    loaded = load_stack(stack_path)
    check_target(loaded.stack, "`prefectstack up` under systemd")
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
    from prefectstack.render import github_actions
    from prefectstack.runtime.bundle import write_bundle
    from prefectstack.stack.loader import load_stack

    loaded = load_stack(stack_path)
    out_dir = _out_dir(loaded, out, ".github/workflows")
    name = Path(stack_path).name if stack_path else "stack.yaml"
    bundle = github_actions.render(loaded.stack, stack_file=name, context=context)
    written = write_bundle(bundle, out_dir)
    _report("GitHub Actions workflow", out_dir, written, [])


COMMANDS = [render]
