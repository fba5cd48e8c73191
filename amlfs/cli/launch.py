"""The `amlfs` command's first lines, before any of its modules: an `amlfs mount` starts
its daemon ahead here (amlfs.warm), every command then runs as usual."""

from __future__ import annotations

import sys

from amlfs import warm

SERVE_HANDED_OVER = "amlfs.fuse.mount:serve_handed_over"  # imports what serving needs


def entry_point() -> None:
    mounting = warm.mounting(sys.argv[1:])
    started = warm.prestart(SERVE_HANDED_OVER) if mounting else None
    from amlfs.cli.main import main

    sys.exit(main(own_process=True, warm=started))
