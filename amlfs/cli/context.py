"""What every command shares: the state folder and the options allowed anywhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import click

from amlfs import home as amlfs_home
from amlfs.catalog import open_registry
from amlfs.errors import UserError
from amlfs.registry.store import Registry
from amlfs.warm import WarmDaemon

F = TypeVar("F", bound=Callable)


@dataclass
class AppContext:
    home: Path | None = None
    # The process is the `amlfs` command's own, not a caller's that runs main() (a test,
    # a script): a command may then fork it into a daemon.
    own_process: bool = False
    warm: WarmDaemon | None = None  # a mount's daemon started ahead (amlfs.warm), if any
    # Said on stderr once the command has succeeded (a failure's one line stands alone).
    warnings: list[str] = field(default_factory=list)
    _registry: Registry | None = field(default=None, repr=False)

    def registry(self) -> Registry:
        """The registry of the state folder, opened (and created) on first use, and
        caught up with its catalog if it is attached to one (amlfs.catalog)."""
        if self._registry is None:
            home = self.home or amlfs_home.default_home()
            self._registry = open_registry(home, offline=self.warnings.append)
            click.get_current_context().call_on_close(self.close_registry)
        return self._registry

    def close_registry(self) -> None:
        """Close the registry's connection (a later registry() opens a new one)."""
        if self._registry is not None:
            self._registry.close()
            self._registry = None


def app(ctx: click.Context) -> AppContext:
    root = ctx.find_root()
    if root.obj is None:
        root.obj = AppContext()
    return root.obj


def _set_home(ctx: click.Context, _: click.Parameter, value: Path | None) -> None:
    if value is not None:
        app(ctx).home = value


def common_options(command: F) -> F:
    """`--home` and `--debug`, accepted before or after any subcommand."""
    command = click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        expose_value=False,
        callback=_set_home,
        is_eager=True,
        help="State folder (default: $AMLFS_HOME, else $XDG_DATA_HOME/amlfs).",
    )(command)
    # main() reads --debug from the arguments itself, before parsing can fail.
    return click.option(
        "--debug", is_flag=True, expose_value=False, help="Log debug messages and show tracebacks."
    )(command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)


def read_text_file(path: Path) -> str:
    """A YAML file given on the command line, or a one-line UserError."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
