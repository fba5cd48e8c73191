"""`amlfs run`: a command with its inputs and outputs wired up, recorded with the exact
versions it read and wrote.

The order is fixed: check everything (the command, every version, every datastore,
every placeholder) before anything starts; record the run; set up the inputs and
outputs; run the command; settle the outputs (uploads and registrations only after
exit 0); record the end; take everything down. The take-down runs whatever happened
before it, Ctrl-C and SIGTERM included, and never deletes a file it was unable to upload.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import re
import secrets
import shutil
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from amlfs import locks, mounts
from amlfs.credentials import daemon_environment, job_environment
from amlfs.errors import AmlfsError, UserError
from amlfs.home import default_home
from amlfs.jobs.command import check_command, run_command
from amlfs.jobs.lineage import run_lock
from amlfs.jobs.spec import InputSpec, OutputSpec, check_names, substitute
from amlfs.registry.models import Version
from amlfs.registry.prunes import require_data
from amlfs.registry.runs import Run, RunInput, RunLog, RunOutput
from amlfs.registry.store import Registry, now

log = logging.getLogger(__name__)


class Advance(Protocol):
    def advance(self, nbytes: int) -> None: ...


@dataclass
class RunHooks:
    """How a run talks to its user: the CLI shows lines, progress bars and unmount waits."""

    say: Callable[[str], None]
    transfer: Callable[[str, int, int], AbstractContextManager[Advance]]
    waiting: Callable[[mounts.MountRecord], None] | None = None


RUN_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")


def new_run_id() -> str:
    """Sortable by start time, unique without coordination: 20261121-101500-3fa2c1."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class Job:
    """One `amlfs run`, checked at construction; `execute()` runs it once."""

    def __init__(self, home: Path, registry: Registry, inputs: list[InputSpec],
                 outputs: list[OutputSpec], command: list[str], hooks: RunHooks,
                 work_root: Path | None = None, pass_env: Sequence[str] = (),
                 run_id: str | None = None) -> None:  # fmt: skip
        check_names(inputs, outputs)
        if not command:
            raise UserError("no command given: amlfs run [OPTIONS] -- COMMAND [ARG…]")
        check_command(command)
        if unset := [name for name in pass_env if name not in os.environ]:
            raise UserError(f"--pass-env {unset[0]}: ${unset[0]} is not set")
        self.pass_env = list(pass_env)
        self.home, self.registry, self.hooks = home, registry, hooks
        self.inputs, self.outputs, self.command = inputs, outputs, command
        self.id = run_id or new_run_id()
        self.versions: dict[str, Version] = {i.name: require_data(registry.resolve(i.ref))
                                              for i in inputs}  # fmt: skip
        self.stores = {o.name: registry.get_datastore(o.datastore) for o in outputs}
        self.targets = {o.name: o.target(self.id) for o in outputs}
        self.work = (work_root or home / "runs").expanduser().absolute() / self.id
        self.input_paths = {i.name: self.work / "inputs" / i.name for i in inputs}
        self.output_paths = {o.name: self.work / "outputs" / o.name for o in outputs}
        local_inputs = {name: str(path) for name, path in self.input_paths.items()}
        local_outputs = {name: str(path) for name, path in self.output_paths.items()}
        self.argv = [substitute(argument, local_inputs, local_outputs, self.id)
                     for argument in command]  # fmt: skip
        self.kept: set[Path] = set()  # output folders not uploaded: never deleted

    def environment(self) -> dict[str, str]:
        """The command's: ours without the datastores' secrets (but those passed on)."""
        env = job_environment(self.registry.list_datastores(), self.pass_env)
        env.update({"AMLFS_RUN_ID": self.id, "AMLFS_HOME": str(self.home)})
        env.update({i.env_var: str(self.input_paths[i.name]) for i in self.inputs})
        env.update({o.env_var: str(self.output_paths[o.name]) for o in self.outputs})
        return env

    def record(self) -> Run:
        return Run(
            id=self.id, command=self.command, started_at=now(), host=socket.gethostname(),
            pid=os.getpid(), user=getpass.getuser(),
            inputs=[RunInput(i.name, self.versions[i.name], i.mode) for i in self.inputs],
            outputs=[RunOutput(o.name, f"{o.datastore}:{self.targets[o.name]}", o.mode,
                               o.register) for o in self.outputs],
        )  # fmt: skip

    def execute(self) -> int:
        """Run the job; return the command's exit status (raise if amlfs itself failed)."""
        run_log = RunLog(self.registry)
        lock_path = run_lock(self.home, self.id)
        lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        alive = locks.hold(lock_path)
        assert alive is not None, "a new run id's lock is this run's own"
        try:
            return self._execute(run_log)
        finally:
            alive.release()

    def _execute(self, run_log: RunLog) -> int:
        run_log.start(self.record())
        self.hooks.say(f"run {self.id}")
        status: int | None = None
        problems: list[str] = []
        try:
            with _interrupt_on(signal.SIGTERM, signal.SIGHUP), ExitStack() as teardown:
                teardown.callback(self._remove_work)
                self._set_up(teardown)
                status = run_command(self.argv, self.environment())
                problems = self._settle_outputs(status, run_log)
        except BaseException as error:
            reason = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error)
            run_log.finish(self.id, now(), status, reason or type(error).__name__)
            raise
        run_log.finish(self.id, now(), status, "; ".join(problems) or None)
        if status != 0:
            self.hooks.say(f"run {self.id}: the command exited {status}")
            return status
        if problems:
            raise AmlfsError(f"run {self.id}: " + "; ".join(problems))
        self.hooks.say(f"run {self.id}: done")
        return 0

    # -- setting up ---------------------------------------------------------------

    def _set_up(self, teardown: ExitStack) -> None:
        for spec in self.inputs:
            path = self.input_paths[spec.name]
            path.mkdir(parents=True)
            version = self.versions[spec.name]
            if spec.mode == "mount":
                teardown.callback(self._unmount_quietly, path)
                self._start_mount(spec.name, version.datastore, ["mount", version.ref, str(path)])
                self.hooks.say(f"input {spec.name}: {version.ref} mounted at {path}")
            else:
                self._download(spec.name, version, path)
        for spec in self.outputs:
            path = self.output_paths[spec.name]
            path.mkdir(parents=True)
            location = f"{spec.datastore}:{self.targets[spec.name]}"
            if spec.mode == "mount":
                teardown.callback(self._unmount_quietly, path)
                self._start_mount(spec.name, spec.datastore,
                                  ["output", "mount", location, str(path)])  # fmt: skip
                self.hooks.say(f"output {spec.name}: {location} mounted at {path}")

    def _start_mount(self, name: str, datastore: str, args: list[str]) -> None:
        env = daemon_environment(self.registry.list_datastores(), datastore)
        # Tied to us: if `amlfs run` is killed outright, its mounts still end cleanly.
        mounts.start_daemon(self.home, args, log_name=f"run-{self.id}-{name}", env=env,
                            ends_with_us=True)  # fmt: skip

    def _download(self, name: str, version: Version, dest: Path) -> None:
        from amlfs.transfer.download import DownloadFailed, download_version

        with self.hooks.transfer(f"input {name}", version.file_count,
                                 version.total_bytes) as progress:  # fmt: skip
            report = download_version(self.home, self.registry, version, dest,
                                      progress=lambda f: progress.advance(f.size))  # fmt: skip
        if report.failed:
            raise DownloadFailed(report)
        self.hooks.say(f"input {name}: {version.ref} downloaded to {dest}")

    # -- outputs ------------------------------------------------------------------

    def _settle_outputs(self, status: int, run_log: RunLog) -> list[str]:
        """Unmount output mounts, upload upload-mode outputs after exit 0, register what
        was asked for; return what went wrong (one line each)."""
        problems = []
        for spec in self.outputs:
            try:
                if spec.mode == "mount":
                    self._settle_mount(spec, status, run_log)
                elif status == 0:
                    self._upload(spec, run_log)
                else:
                    self.hooks.say(f"output {spec.name}: not uploaded: the command failed")
            except AmlfsError as error:
                problems.append(f"output {spec.name}: {error}")
        return problems

    def _settle_mount(self, spec: OutputSpec, status: int, run_log: RunLog) -> None:
        from amlfs.transfer.outputs import (
            check_dead_sessions,
            ended_session,
            pinned_files,
            session_version,
        )

        path = self.output_paths[spec.name]
        record = mounts.unmount(self.home, path, waiting=self.hooks.waiting)
        if record is None or "session" not in record.stats:
            check_dead_sessions(self.home, path)  # its files left pending, if any
            raise AmlfsError("its mount daemon ended before the command did; what it stored"
                             " stays, nothing is registered")  # fmt: skip
        session, rows = ended_session(self.home, record.stats["session"])
        stored = pinned_files(rows)
        where = f"{spec.datastore}:{self.targets[spec.name]}"
        self.hooks.say(f"output {spec.name}: {len(stored)} file(s) stored at {where}")
        if spec.register is None:
            return
        if status != 0:
            self.hooks.say(f"output {spec.name}: not registered: the command failed")
        elif not stored:
            self.hooks.say(f"output {spec.name}: nothing written, nothing registered")
        else:
            new = session_version(session, rows, spec.register)
            version = run_log.register_output(self.id, spec.name, new)
            self.hooks.say(f"output {spec.name}: registered {version.ref}")

    def _upload(self, spec: OutputSpec, run_log: RunLog) -> None:
        from amlfs.storage import Store
        from amlfs.transfer.upload import UploadFailed, local_files, upload, uploaded_version

        path = self.output_paths[spec.name]
        if not any(path.iterdir()):
            self.hooks.say(f"output {spec.name}: nothing written, nothing uploaded")
            return
        self.kept.add(path)  # until every file is stored
        files = local_files(path)
        target = self.targets[spec.name]
        store = Store(self.stores[spec.name])
        with self.hooks.transfer(f"output {spec.name}", len(files),
                                 sum(f.size for f in files)) as progress:  # fmt: skip
            report = upload(files, store, target, progress=lambda f: progress.advance(f.size))
        if report.failed:
            raise UploadFailed(report)
        self.kept.discard(path)
        self.hooks.say(f"output {spec.name}: {len(files)} file(s) uploaded to"
                       f" {spec.datastore}:{target}")  # fmt: skip
        if spec.register is not None:
            new = uploaded_version(store, spec.register, target, report.pinned)
            version = run_log.register_output(self.id, spec.name, new)
            self.hooks.say(f"output {spec.name}: registered {version.ref}")

    # -- taking down --------------------------------------------------------------

    def _unmount_quietly(self, path: Path) -> None:
        """Take-down of a mount the run made, if it is still mounted (the run failed)."""
        if str(path) not in mounts.mounted_paths():
            return
        try:
            mounts.unmount(self.home, path, waiting=self.hooks.waiting)
        except AmlfsError as error:
            log.warning("%s", error)

    def _remove_work(self) -> None:
        """Remove the run's folder, except output folders whose files were not uploaded,
        and never through a mount that is still there."""
        still_mounted = [p for p in mounts.mounted_paths() if p.startswith(f"{self.work}/")]
        if still_mounted:
            log.warning("%s left in place: %s is still mounted", self.work, still_mounted[0])
            return
        self._forget_downloads()
        for spec in self.outputs:
            path = self.output_paths[spec.name]
            if path in self.kept:
                location = f"{spec.datastore}:{self.targets[spec.name]}"
                register = f" --register {spec.register}" if spec.register else ""
                home = "" if self.home == default_home() else f" --home {self.home}"
                self.hooks.say(f"output {spec.name}: kept at {path}; to upload it:"
                               f" amlfs{home} upload {path} {location}{register}")  # fmt: skip
        for path in _removable(self.work, self.kept):
            shutil.rmtree(path, ignore_errors=True)

    def _forget_downloads(self) -> None:
        from amlfs.transfer.journal import Journal

        downloaded = [self.input_paths[i.name] for i in self.inputs if i.mode == "download"]
        if not downloaded:
            return
        journal = Journal(self.home, durable=False)
        try:
            for path in downloaded:
                journal.forget_placed(path)
        finally:
            journal.close()


def _removable(work: Path, kept: set[Path]) -> list[Path]:
    """WORK itself, or, when some output folders in it are kept, everything else in it."""
    if not kept:
        return [work]
    outputs = work / "outputs"
    return [child for child in work.iterdir() if child != outputs] + [
        child for child in outputs.iterdir() if child not in kept
    ]


@contextlib.contextmanager
def _interrupt_on(*signums: signal.Signals) -> Iterator[None]:
    """SIGNUMS interrupt the run as Ctrl-C does (their default would end it without its
    take-down)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, interrupt) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
