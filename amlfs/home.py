"""The state folder: where the registry (and later the block cache) lives."""

from __future__ import annotations

import os
from pathlib import Path

from amlfs.errors import UserError

HOME_ENV = "AMLFS_HOME"
REGISTRY_FILE = "registry.db"

# Private by default: the registry names datastores and paths that may be sensitive.
HOME_MODE = 0o700
REGISTRY_MODE = 0o600


def default_home() -> Path:
    """`$AMLFS_HOME`, else `$XDG_DATA_HOME/amlfs`, else `~/.local/share/amlfs`."""
    if explicit := os.environ.get(HOME_ENV):
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "amlfs"


def ensure_home(home: Path) -> Path:
    """Create the state folder on first use, mode 0700; return its absolute path."""
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
    return home


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
