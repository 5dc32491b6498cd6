"""This Python installation, where an unprivileged account can run it: the workers (and so
every flow run) run as the flows account, and the interpreter may sit where that account
can't go (a pyenv or a virtualenv in root's 0700 home).

The mirror is `<state dir>/runtime/python/`: the installation's `lib/` tree and its
interpreter, hard-linked (copied across filesystems), so it costs next to nothing and changes
no permission outside the state dir. Hard links share their file's inode, mode and owner: a
file the account may not read where it is installed, it may not read here either. Import
paths that `.pth` files add from outside the installation (an editable install's source) are
copied when the account can't reach them, and the mirrored `.pth` points at the copy.

`plan` is pure (paths in, paths out); `build` does the linking.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from prefectstack.errors import StackError
from prefectstack.runtime import reach

MIRROR_DIR = "python"
_MARKER = ".python-mirror.json"
# The launchers the local backend runs for the logical programs `python` and `prefect`.
LAUNCH_DIR = "launch"
PREFECT_LAUNCHER = "prefect"


@dataclass(frozen=True)
class Installation:
    """What of this interpreter the mirror needs (from `sys` and `sysconfig`)."""

    executable: Path
    base_prefix: Path
    prefix: Path
    """a virtualenv's prefix, or `base_prefix`"""
    site_dirs: tuple[Path, ...]
    shared_libdir: Path | None = None
    """where libpython is, for an interpreter built with `--enable-shared`"""

    @property
    def venv(self) -> bool:
        return self.prefix != self.base_prefix


@dataclass(frozen=True)
class Plan:
    """Where each piece goes, relative to the mirror's root."""

    trees: tuple[tuple[Path, str], ...]
    """(source dir or file, destination) hard-linked"""
    interpreter: str
    """the interpreter to run, relative to the mirror"""
    venv_cfg: tuple[str, str] | None = None
    """(destination, content) of a virtualenv's pyvenv.cfg, pointing at the mirrored base"""
    links: tuple[tuple[str, str], ...] = ()
    """(destination, symlink target) of a virtualenv's interpreter"""
    copies: tuple[tuple[Path, str], ...] = ()
    """import paths outside the installation the account can't reach: (source, destination)"""
    pth: dict[str, str] = field(default_factory=dict)
    """destination of a `.pth` file -> its rewritten content"""
    libdir: str | None = None
    """LD_LIBRARY_PATH (relative) for a shared-library interpreter"""


def current() -> Installation:
    site_dirs = tuple(
        Path(p) for p in dict.fromkeys(
            sysconfig.get_paths(vars={"base": sys.prefix, "platbase": sys.prefix})[k]
            for k in ("purelib", "platlib")
        ) if Path(p).is_dir()
    )
    libdir = sysconfig.get_config_var("LIBDIR")
    shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED")) and libdir
    return Installation(
        executable=Path(sys.executable), base_prefix=Path(sys.base_prefix),
        prefix=Path(sys.prefix), site_dirs=site_dirs,
        shared_libdir=Path(libdir) if shared else None,
    )


def _inside(path: Path, root: Path) -> str | None:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return None


def plan(inst: Installation, pth_files: dict[Path, str],
         reachable: reach.Check) -> Plan:
    """How to mirror `inst` for an account that reaches what `reachable` says.
    `pth_files`: each `.pth` file in the site dirs -> its content."""
    base = "base" if inst.venv else "."
    # The real file: `bin/python` is often a link to `python3.x` (a virtualenv's, to the
    # base interpreter), and a hard link to a symlink would point nowhere in the mirror.
    exe = Path(os.path.realpath(inst.executable))
    exe_rel = _inside(exe, inst.base_prefix)
    if exe_rel is None:
        raise StackError(f"the interpreter {exe} is not inside its prefix {inst.base_prefix}",
                         hint="run prefectstack as a normal user, or from an interpreter "
                              "the flows account can reach")
    trees: list[tuple[Path, str]] = [
        (inst.base_prefix / "lib", f"{base}/lib"), (exe, f"{base}/{exe_rel}")]
    interpreter = f"{base}/{exe_rel}"
    venv_cfg = None
    links: list[tuple[str, str]] = []
    if inst.venv:
        trees.append((inst.prefix / "lib", "venv/lib"))
        venv_cfg = ("venv/pyvenv.cfg",
                    f"home = {{mirror}}/base/{Path(exe_rel).parent}\n"
                    "include-system-site-packages = false\n")
        links.append((f"venv/bin/{exe.name}", f"../../base/{exe_rel}"))
        interpreter = f"venv/bin/{exe.name}"
    prefix_dirs = [(inst.base_prefix, base)] + ([(inst.prefix, "venv")] if inst.venv else [])
    copies: list[tuple[Path, str]] = []
    pth: dict[str, str] = {}
    for path, content in sorted(pth_files.items()):
        dest = _mirrored(path, prefix_dirs)
        if dest is None:
            continue
        lines, changed = [], False
        for line in content.splitlines():
            entry = line.strip()
            if entry and not entry.startswith(("#", "import ", "import\t")):
                target = Path(entry) if os.path.isabs(entry) else path.parent / entry
                if _mirrored(target, prefix_dirs) is None and not reachable(target):
                    copy = f"paths/{len(copies)}"
                    copies.append((target, copy))
                    line, changed = "{mirror}/" + copy, True
            lines.append(line)
        if changed:
            pth[dest] = "\n".join(lines) + "\n"
    libdir = None
    if inst.shared_libdir is not None:
        libdir = _mirrored(inst.shared_libdir, prefix_dirs)
    return Plan(trees=tuple(trees), interpreter=interpreter, venv_cfg=venv_cfg,
                links=tuple(links), copies=tuple(copies), pth=pth, libdir=libdir)


def _mirrored(path: Path, prefix_dirs: list[tuple[Path, str]]) -> str | None:
    """Where `path` (inside the installation's lib tree) is in the mirror."""
    for prefix, dest in reversed(prefix_dirs):  # the venv first: it sits inside no base
        rel = _inside(path, prefix)
        if rel is not None and (rel == "lib" or rel.startswith("lib/")):
            return f"{dest}/{rel}"
    return None


def needed(inst: Installation, pth_files: dict[Path, str], reachable: reach.Check) -> bool:
    """Whether the account can't run this installation where it is."""
    paths = [inst.executable, Path(os.path.realpath(inst.executable)), inst.base_prefix / "lib",
             inst.prefix / "lib", *inst.site_dirs]
    if inst.shared_libdir is not None:
        paths.append(inst.shared_libdir)
    for path, content in pth_files.items():
        for line in content.splitlines():
            entry = line.strip()
            if entry and not entry.startswith(("#", "import ", "import\t")):
                paths.append(Path(entry) if os.path.isabs(entry) else path.parent / entry)
    return not all(reachable(p) for p in paths if p.exists())


def pth_files(inst: Installation) -> dict[Path, str]:
    out = {}
    for site_dir in inst.site_dirs:
        for path in sorted(site_dir.glob("*.pth")):
            try:
                out[path] = path.read_text()
            except (OSError, UnicodeDecodeError):
                continue
    return out


@dataclass(frozen=True)
class Mirror:
    """An interpreter the account can run, and the environment it needs."""

    python: Path
    """a launcher of the interpreter (the logical program `python`)"""
    prefect: Path
    """a launcher of `python -m prefect` (the logical program `prefect`)"""
    interpreter: Path


def _fingerprint(inst: Installation, p: Plan) -> dict[str, object]:
    """What a change of the installation changes: its dirs' mtimes (a package installed,
    upgraded or removed renames entries there), the interpreter, the copied paths."""
    watched = [inst.executable, inst.base_prefix / "lib", *inst.site_dirs,
               *(src for src, _ in p.copies)]
    out: dict[str, object] = {}
    for path in watched:
        st = path.stat()
        out[str(path)] = [st.st_ino, st.st_size, st.st_mtime_ns]
    return out


def build(root: Path, account: str, inst: Installation | None = None) -> Mirror | None:
    """The mirror under `root` (`<state dir>/runtime/python`) for `account`, rebuilt only
    when the installation changed; None when the account can run the interpreter where
    it is. The copied import paths (small: an editable install's source) are refreshed
    every time."""
    inst = inst or current()
    files = pth_files(inst)

    def reachable(path: Path) -> bool:
        return reach.can_read_tree(path, account) if path.is_dir() else (
            reach.blocking_dir(path, account) is None)

    if not needed(inst, files, reachable):
        return None
    p = plan(inst, files, reachable)
    marker = root.parent / f".{root.name}{_MARKER}"
    wanted = _fingerprint(inst, p)
    fresh = False
    try:
        fresh = root.is_dir() and json.loads(marker.read_text()) == wanted
    except (OSError, ValueError):
        pass
    if not fresh:
        _build(root, p)
        marker.write_text(json.dumps(wanted))
    for src, dest in p.copies:
        reach.refresh_copy(src, root / dest)
    return Mirror(python=root / LAUNCH_DIR / "python",
                  prefect=root / LAUNCH_DIR / PREFECT_LAUNCHER, interpreter=root / p.interpreter)


def launchers(root: Path, p: Plan) -> dict[str, str]:
    """The programs the supervisor runs (`python`, and `prefect` for `python -m prefect`):
    shell scripts that run the mirrored interpreter with what it needs in its environment.
    A shared-library interpreter finds libpython through a RUNPATH into the installation,
    which the account can't reach: LD_LIBRARY_PATH comes first. The worker's flow runs
    (`sys.executable -m prefect.engine`) inherit it; it holds only Python's own lib dir."""
    head = "#!/bin/sh\n"
    if p.libdir:
        lib = shlex.quote(str(root / p.libdir))
        head += (f"LD_LIBRARY_PATH={lib}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\n"
                 "export LD_LIBRARY_PATH\n")
    python = shlex.quote(str(root / p.interpreter))
    return {"python": f'{head}exec {python} "$@"\n',
            PREFECT_LAUNCHER: f'{head}exec {python} -m prefect "$@"\n'}


def _build(root: Path, p: Plan) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp")
    reach.remove(tmp)
    try:
        tmp.mkdir(mode=0o755)
        for src, dest in p.trees:
            target = tmp / dest
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            if src.is_dir():
                shutil.copytree(src, target, symlinks=True, copy_function=reach.link_or_copy)
            else:
                reach.link_or_copy(str(src), str(target))
        for dest, link in p.links:
            (tmp / dest).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            (tmp / dest).symlink_to(link)
        if p.venv_cfg:
            dest, content = p.venv_cfg
            (tmp / dest).write_text(content.replace("{mirror}", str(root)))
        for dest, content in p.pth.items():
            (tmp / dest).unlink(missing_ok=True)  # a link to the original: never write it
            (tmp / dest).write_text(content.replace("{mirror}", str(root)))
        for name, text in launchers(root, p).items():
            launcher = tmp / LAUNCH_DIR / name
            launcher.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            launcher.write_text(text)
            launcher.chmod(0o755)
    except OSError as exc:
        reach.remove(tmp)
        raise StackError(f"could not mirror Python into {root}: {exc.strerror}",
                         hint="free some space in the state dir") from None
    reach.remove(root)
    os.replace(tmp, root)
