"""Fixtures that own every resource a test uses: the emulator, containers, state folders."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import adlfs
import pytest

from amlfs.cli.main import main
from tests.support.azurite import Azurite
from tests.support.mounts import Mounts
from tests.support.sample import FILES

IN_CI = os.environ.get("CI") == "true"
CONNECTION_ENV = "AMLFS_TEST_CONNECTION_STRING"


def require(condition: bool, reason: str) -> None:
    """Skip on a developer machine that lacks a facility; under CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason}; CI must not skip this", pytrace=False)
    pytest.skip(reason)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.strip().splitlines()[-1]


class Cli:
    """Runs `amlfs` in-process (fast) or as a subprocess (real end to end)."""

    def __init__(self, home: Path):
        self.home = home

    def __call__(self, *args: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["--home", str(self.home), *args])
        return Result(code, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.code == 0, f"amlfs {' '.join(args)} failed: {result.err}"
        return result

    def process(self, *args: str, env: dict | None = None) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "amlfs", "--home", str(self.home), *args],
            capture_output=True, text=True, timeout=120, env=env or os.environ.copy(),
        )  # fmt: skip
        return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def impostor() -> Iterator[int]:
    """A live process with "amlfs" in its command line that holds no lock of ours: what
    a dead daemon's or run's pid can be after a reboot. Ended by pid at teardown."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "amlfs"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The CLI with a fresh state folder of this test's own."""
    return Cli(tmp_path / "home")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One real Azurite blob service for the session, stopped by pid at the end."""
    require(Azurite.available(), "Azurite is not installed (run `npm ci`)")
    emulator = Azurite(tmp_path_factory.mktemp("azurite"))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
        shutil.rmtree(emulator.workdir, ignore_errors=True)


@pytest.fixture
def own_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Azurite]:
    """An emulator of this test's own, which the test stops and starts again."""
    require(Azurite.available(), "Azurite is not installed (run `npm ci`)")
    emulator = Azurite(tmp_path / "azurite")
    emulator.start()
    monkeypatch.setenv(CONNECTION_ENV, emulator.connection_string)
    try:
        yield emulator
    finally:
        emulator.stop()


@dataclass
class Container:
    """A blob container of one test's own, with the connection string in the environment."""

    name: str
    fs: adlfs.AzureBlobFileSystem
    env_var: str = CONNECTION_ENV

    @property
    def url(self) -> str:
        return f"az://{self.name}"

    def put(self, files: dict[str, bytes]) -> None:
        self.fs.pipe({f"{self.name}/{path}": data for path, data in files.items()})


@pytest.fixture
def container(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    monkeypatch.setenv(CONNECTION_ENV, azurite.connection_string)
    fs = adlfs.AzureBlobFileSystem(
        connection_string=azurite.connection_string, skip_instance_cache=True
    )
    name = f"t{uuid.uuid4().hex[:16]}"
    fs.mkdir(name)
    try:
        yield Container(name, fs)
    finally:
        # A test may have stopped the emulator; its data folder is removed at the end anyway.
        with contextlib.suppress(Exception):
            fs.rm(name, recursive=True)


@pytest.fixture
def mounts(cli: Cli, tmp_path: Path) -> Iterator[Mounts]:
    """Real FUSE mounts made with `amlfs mount`; all unmounted and ended at teardown."""
    require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    require(shutil.which("fusermount3") is not None, "fusermount3 is missing (apt: fuse3)")
    helper = Mounts(cli, tmp_path)
    try:
        yield helper
    finally:
        helper.cleanup()


@pytest.fixture
def dataset(cli: Cli, container: Container) -> Container:
    """The sample FILES in a container, registered as `ds:1` of datastore `blob`."""
    container.put(FILES)
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".")
    return container
