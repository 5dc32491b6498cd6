"""`prefectstack` command line. This module is the only error boundary: a `StackError`
becomes one clear message and its exit code, never a traceback."""

from __future__ import annotations

import sys

import click

from prefectstack import console
from prefectstack.errors import StackError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="prefectstack")
def cli() -> None:
    """A production-grade, self-hosted Prefect 3 platform from one stack.yaml."""


def _register() -> None:
    from prefectstack.cli import (
        audit,
        backup,
        deploy,
        doctor,
        down,
        keys,
        logs,
        render,
        schema,
        status,
        up,
        upgrade,
        users,
        worker,
    )

    for module in (up, down, status, logs, schema, render, deploy, worker, users, keys, audit,
                   backup, doctor, upgrade):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except StackError as exc:
        console.error(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        console.error(StackError("aborted"))
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        # An unwritable or read-only state dir, a full disk, a file that vanished: the
        # system's own words and the path, never a traceback.
        console.error(os_error(exc))
        sys.exit(1)


def os_error(exc: OSError) -> StackError:
    import errno

    where = f": {exc.filename}" if exc.filename else ""
    hints = {
        errno.EACCES: "check the permissions of that path (or run as its owner)",
        errno.EPERM: "check the permissions of that path (or run as its owner)",
        errno.EROFS: "the file system is read-only: choose a state_dir on a writable one",
        errno.ENOSPC: "the disk is full: free some space and run the command again",
        errno.EDQUOT: "the disk quota is exhausted: free some space",
    }
    return StackError(f"{exc.strerror or exc}{where}", hint=hints.get(exc.errno or 0))
