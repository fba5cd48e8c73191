"""The folders of lost runs, cleaned up: an `amlfs run` killed outright (SIGKILL, the OOM
killer, a power cut) never takes down its folder HOME/runs/RUN_ID; the next `amlfs run`
or `amlfs status` does.

A folder is a lost run's when the run's lock is free (amlfs.jobs.lineage.run_lock): its
`amlfs run` is gone. Then, as the run's own take-down would:
- a mount of amlfs under it whose daemon is gone is detached first (its daemon, tied to
  the run, normally ended with it); one still served leaves the folder for a later pass;
- a folder some process still uses (its working folder or an open file there: the
  killed run's command may outlive it) is left for a later pass;
- an output folder holding files is kept, never deleted: an upload-mode output of a
  killed run was never uploaded. The user is told where it is and how to upload it,
  once, when the rest of the folder goes;
- everything else goes (downloaded inputs, empty mountpoints and output folders), and
  the journal forgets what downloads placed there.
Folders given with `amlfs run --work-dir` are not known afterwards and are not cleaned.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from amlfs import locks, mounts
from amlfs.errors import AmlfsError, NotFound
from amlfs.home import default_home
from amlfs.jobs.lineage import run_lock
from amlfs.registry.runs import RunLog
from amlfs.registry.store import Registry

log = logging.getLogger(__name__)


def clean_lost_runs(home: Path, say: Callable[[str], None],
                    registry: Callable[[], Registry]) -> None:  # fmt: skip
    """Clean the folders of lost runs under HOME/runs, telling SAY what was kept and
    why; REGISTRY gives the registry (opened only to name a kept output's destination)."""
    from amlfs.jobs.run import RUN_ID

    root = home / "runs"
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if not RUN_ID.fullmatch(folder.name) or not _is_folder(folder):
            continue
        if locks.held(run_lock(home, folder.name)):
            continue  # its run is alive
        try:
            _clean(home, folder, say, registry)
        except (OSError, AmlfsError) as error:
            log.warning("the folder of lost run %s is left in place: %s", folder.name, error)


def _clean(home: Path, folder: Path, say: Callable[[str], None],
           registry: Callable[[], Registry]) -> None:  # fmt: skip
    for point in _mounts_under(folder):
        mounts.detach_if_dead(home, Path(point))
    if still := _mounts_under(folder):
        say(f"lost run {folder.name}: {folder} left in place: {still[0]} is still mounted")
        return
    if user := using(folder):
        log.info("lost run %s: %s left in place: pid %d uses it", folder.name, folder, user)
        return
    kept = [p for p in _outputs(folder) if _holds_files(p)]
    removable = _removable(folder, kept)
    if not removable:
        return  # cleaned before: only kept outputs remain
    _forget_downloads(home, folder)
    for path in removable:
        shutil.rmtree(path) if _is_folder(path) else path.unlink()
    if kept:
        for line in _kept_lines(home, folder, kept, registry):
            say(line)
    else:
        log.info("removed the folder of lost run %s", folder.name)


def _is_folder(path: Path) -> bool:
    """A folder itself, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _mounts_under(folder: Path) -> list[str]:
    return sorted(p for p in mounts.mounted_paths() if p.startswith(f"{folder}/"))


def using(folder: Path) -> int | None:
    """The pid of a process of ours whose working folder or an open file is in FOLDER
    (processes of other users cannot be seen, nor use a run folder, which is private)."""
    prefix = f"{folder}/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            links = [proc / "cwd", *(proc / "fd").iterdir()]
            for link in links:
                target = os.readlink(link)
                if target == str(folder) or target.startswith(prefix):
                    return int(proc.name)
        except OSError:
            continue  # ended meanwhile, or not ours
    return None


def _outputs(folder: Path) -> list[Path]:
    outputs = folder / "outputs"
    if not _is_folder(outputs):
        return []
    return sorted(p for p in outputs.iterdir() if _is_folder(p))


def _holds_files(path: Path) -> bool:
    return any(not _is_folder(p) for p in path.rglob("*"))


def _removable(folder: Path, kept: list[Path]) -> list[Path]:
    """What goes: everything in FOLDER but the KEPT output folders (and FOLDER itself,
    when nothing is kept)."""
    if not kept:
        return [folder]
    outputs = folder / "outputs"
    return [p for p in folder.iterdir() if p != outputs] + [
        p for p in outputs.iterdir() if p not in kept
    ]


def _forget_downloads(home: Path, folder: Path) -> None:
    """The journal's placed files under FOLDER's inputs: they go with the folder."""
    from amlfs.transfer.journal import Journal

    inputs = folder / "inputs"
    if not _is_folder(inputs):
        return
    journal = Journal(home, durable=False)
    try:
        for path in inputs.iterdir():
            journal.forget_placed(path)
    finally:
        journal.close()


def _kept_lines(home: Path, folder: Path, kept: list[Path],
                registry: Callable[[], Registry]) -> list[str]:  # fmt: skip
    """What to tell about the output folders kept: where they are, and how to upload
    them where the run would have (as its record says)."""
    try:
        outputs = {o.name: o for o in RunLog(registry()).get(folder.name).outputs}
    except (NotFound, AmlfsError):
        outputs = {}
    at_home = "" if home == default_home() else f" --home {home}"
    lines = []
    for path in kept:
        line = f"lost run {folder.name}: output {path.name} was never uploaded; kept at {path}"
        if (output := outputs.get(path.name)) is not None and output.mode == "upload":
            register = f" --register {output.register}" if output.register else ""
            line += f"; to upload it: amlfs{at_home} upload {path} {output.location}{register}"
        lines.append(line)
    return lines
