"""The state folder: where the registry (and later the block cache) lives."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from amlfs.errors import UserError

HOME_ENV = "AMLFS_HOME"
REGISTRY_FILE = "registry.db"

# Private by default: the registry names datastores and paths that may be sensitive.
HOME_MODE = 0o700
REGISTRY_MODE = 0o600
PRIVATE_UMASK = 0o077

log = logging.getLogger(__name__)

_caller_umask: int | None = None  # while private_files() is in force: the umask before it


def default_home() -> Path:
    """`$AMLFS_HOME`, else `$XDG_DATA_HOME/amlfs`, else `~/.local/share/amlfs`."""
    if explicit := os.environ.get(HOME_ENV):
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "amlfs"


def ensure_home(home: Path) -> Path:
    """The state folder, absolute: created 0700 on first use; an existing one must be
    ours (UserError otherwise) and is made 0700 if it is looser."""
    home = home.expanduser().absolute()
    if home.exists() and not home.is_dir():
        raise UserError(f"state folder {home} exists and is not a directory")
    if not home.exists():
        try:
            home.mkdir(parents=True, mode=HOME_MODE)
        except FileExistsError:
            pass  # another process created it at the same moment
        except OSError as exc:
            raise UserError(f"cannot create state folder {home}: {exc.strerror}") from exc
        # mkdir's mode is filtered by the umask; set it exactly.
        os.chmod(home, HOME_MODE)
    st = home.stat()
    if st.st_uid != os.geteuid():
        raise UserError(f"state folder {home} belongs to uid {st.st_uid}, not to you"
                        f" (uid {os.geteuid()}); use a folder of your own (--home)")  # fmt: skip
    if stat.S_IMODE(st.st_mode) != HOME_MODE:
        # What amlfs creates is private by its own mode, but what older versions made
        # (0644 files, 0755 folders) relies on this folder's mode alone.
        os.chmod(home, HOME_MODE)
        log.warning("state folder %s was mode %04o; made it 0700", home, stat.S_IMODE(st.st_mode))
    return home


def private_folder(path: Path, what: str) -> Path:
    """PATH as a folder only this user can change, absolute: created 0700 if missing; an
    existing one not ours, or writable by group or others, is a UserError (files planted
    there would be taken for ours)."""
    path = path.expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError as exc:
        raise UserError(f"{what} {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is not a folder")
    if st.st_uid != os.geteuid():
        raise UserError(f"{what} {path} belongs to uid {st.st_uid}, not to you (uid"
                        f" {os.geteuid()}); use a folder only you can write to")  # fmt: skip
    if st.st_mode & 0o022:
        raise UserError(f"{what} {path} is writable by others (mode"
                        f" {stat.S_IMODE(st.st_mode):04o}); use a folder only you can write"
                        " to, or chmod go-w it")  # fmt: skip
    return path


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Run amlfs inside: files are created 0600 and folders 0700 (umask 077), whoever
    creates them, SQLite and diskcache included, so that nothing amlfs keeps (journal,
    logs, records, staged files, cached blocks) is readable by others even where HOME
    is not. The umask of the caller comes back on the way out; callers_files() and a
    job's command use it meanwhile."""
    global _caller_umask
    outer = _caller_umask
    previous = os.umask(PRIVATE_UMASK)
    _caller_umask = previous if outer is None else outer
    try:
        yield
    finally:
        os.umask(previous)
        _caller_umask = outer


def caller_umask() -> int:
    """The umask amlfs was started with: what a job's command runs under."""
    if _caller_umask is not None:
        return _caller_umask
    current = os.umask(PRIVATE_UMASK)
    os.umask(current)
    return current


@contextlib.contextmanager
def callers_files() -> Iterator[None]:
    """Create files as the caller would inside: what amlfs writes for the user outside
    HOME (a download's DEST, an exported manifest) has the modes the user expects."""
    previous = os.umask(caller_umask())
    try:
        yield
    finally:
        os.umask(previous)


def cache_dir(home: Path) -> Path:
    """The default block cache folder of HOME (shared by every mount that uses HOME)."""
    return ensure_home(home) / "cache" / "blocks"


def registry_path(home: Path) -> Path:
    """The registry database inside HOME, created empty with mode 0600 if missing."""
    path = ensure_home(home) / REGISTRY_FILE
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, REGISTRY_MODE)
        os.close(fd)
    return path
