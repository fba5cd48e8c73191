"""Secrets stay in the environment of the process that uses them: never in the registry,
exports, JSON, logs, records or errors; a mount daemon gets its own datastore's secret
and no other; a job's command gets none, unless it is passed on with --pass-env."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from amlfs.mounts import daemon_alive, records
from tests.conftest import CONNECTION_ENV, Cli, Container, Result
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, free_port
from tests.support.mounts import Mounts
from tests.support.sample import FILES, OPTIONS
from tests.support.waiting import until
from tests.test_daemon import Service

SAS = "sv=2024-01-01&ss=b&srt=sco&sp=rl&sig=SuperSecretSignature%2Fvalue%3D"
OTHER_KEY = "T3RoZXJTZWNyZXRBY2NvdW50S2V5VGhhdE5vRGFlbW9uT2ZCbG9iTWF5U2VlMTIzNA=="

# The job of a run: its own environment, and that of every mount daemon alive while it
# runs (its own and the test's), into files in the folder it is given.
JOB = """
import json, pathlib, subprocess, sys
out = pathlib.Path(sys.argv[1])
(out / "job.env").write_bytes(pathlib.Path("/proc/self/environ").read_bytes())
status = subprocess.run([sys.executable, "-m", "amlfs", "status", "--json"],
                        capture_output=True, check=True).stdout
for record in json.loads(status):
    environ = pathlib.Path(f"/proc/{record['pid']}/environ").read_bytes()
    (out / f"daemon-{record['pid']}.env").write_bytes(environ)
"""


def leaked(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


def environ_of(pid: int) -> dict[str, str]:
    return environ_from(Path(f"/proc/{pid}/environ").read_bytes())


def environ_from(data: bytes) -> dict[str, str]:
    pairs = (item.decode().partition("=") for item in data.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def contents(folder: Path) -> dict[Path, bytes]:
    """Every file under FOLDER, recursively, but those removed while it is read."""
    found = {}
    for top, _, files in os.walk(folder):  # passes over folders removed while it looks
        for path in (Path(top) / name for name in files):
            with contextlib.suppress(FileNotFoundError):
                found[path] = path.read_bytes()
    return found


def started(mounts: Mounts, path: Path, result: Result) -> Result:
    """RESULT of a mount command made at PATH; its daemon is the fixture's to end."""
    assert result.code == 0, result.err
    mounts.pids[path] = int(re.search(r"\(pid (\d+)\)", result.out).group(1))
    return result


def test_no_command_reveals_a_secret(
    cli: Cli, container: Container, mounts: Mounts, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    container.put({"d/a.txt": b"a", "d/b.txt": b"b"})
    down = f"BlobEndpoint=http://127.0.0.1:{free_port()}/{ACCOUNT};SharedAccessSignature={SAS}"
    other = f"DefaultEndpointsProtocol=http;AccountName=other;AccountKey={OTHER_KEY};"
    monkeypatch.setenv("DOWN_CONN", down)
    monkeypatch.setenv("OTHER_CONN", other)
    own = os.environ[CONNECTION_ENV]  # the one datastore every mount here reads from
    others = [down, SAS, "SuperSecretSignature", other, OTHER_KEY]
    secrets = [own, ACCOUNT_KEY, *others]
    manifest, src, dest = tmp_path / "m.yaml", tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "result.txt").write_text("uploaded")
    commands = [
        ["datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV],
        ["datastore", "add", "down", "az://c", "--connection-string-env", "DOWN_CONN"],
        ["datastore", "add", "other", "az://c", "--connection-string-env", "OTHER_CONN"],
        ["datastore", "add", "sas", "az://c@acct.blob.core.windows.net", "--sas-token-env", "S"],
        ["datastore", "list", "--json"],
        ["datastore", "show", "blob", "--json"],
        ["dataset", "register", "d", "--datastore", "blob", "--path", "d"],
        ["dataset", "list", "--json"],
        ["dataset", "show", "d", "--json", "--files"],
        ["dataset", "verify", "d", "--json"],
        ["dataset", "export", "d"],
        ["dataset", "export", "d", "-o", str(manifest)],
        ["dataset", "register", "e", "--datastore", "down", "--path", "x"],  # fails: unreachable
        ["upload", str(src), "blob:up", "--register", "up"],
        ["download", "d", str(dest)],
    ]
    output = ""
    for args in commands:
        result = cli.process("--debug", *args)
        output += result.out + result.err
    assert "cannot list x" in output  # the failing command did report its failure

    mounted, written = mounts.mountpoint(), mounts.mountpoint()
    for path, args in ((mounted, ["mount", "d", str(mounted), *OPTIONS]),
                       (written, ["output", "mount", "blob:out", str(written)])):  # fmt: skip
        output += started(mounts, path, cli.process("--debug", *args)).out
    assert (mounted / "a.txt").read_bytes() == b"a"
    (written / "kept.txt").write_text("written through an output mount")
    seen = tmp_path / "seen"
    seen.mkdir()
    (tmp_path / "job.py").write_text(JOB)
    result = cli.process(
        "--debug", "run", "--input", "m=d", "--input", "l=d,mode=download",
        "--output", "u=blob:run/u", "--output", "o=blob:run/o,mode=mount",
        "--", sys.executable, str(tmp_path / "job.py"), str(seen),
    )  # fmt: skip
    assert result.code == 0, result.err
    output += result.out + result.err + cli.ok("status", "--json").out
    daemons = [record.pid for record in records(cli.home)]
    assert len(daemons) == 2
    environs = {pid: environ_of(pid) for pid in daemons}
    in_home = contents(cli.home)  # with the records and staged files of live mounts
    for path in (mounted, written):
        output += cli.process("--debug", "unmount", str(path)).err

    assert leaked(output, secrets) == []
    assert leaked(manifest.read_text(), secrets) == []
    in_home.update(contents(cli.home))
    assert any(path.suffix == ".log" for path in in_home)
    assert any(path.parent.name == "mounts" for path in in_home)  # a status record
    for path, data in in_home.items():  # registry, journal, logs, records, cache, staging
        assert leaked(data.decode("latin-1"), secrets) == [], path
    job = environ_from((seen / "job.env").read_bytes())
    assert leaked("\n".join(job.values()), secrets) == []
    seen_by_job = [environ_from(path.read_bytes()) for path in seen.glob("daemon-*.env")]
    assert len(seen_by_job) == 4  # the test's two mounts and the run's two
    for environ in [*environs.values(), *seen_by_job]:
        assert environ[CONNECTION_ENV] == own
        assert leaked("\n".join(environ.values()), others) == []


def test_a_job_sees_no_credential_variable_unless_passed_on(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZ_VAR", "the-connection-string")
    monkeypatch.setenv("AZURE_TENANT_ID", "a-tenant")  # no datastore names it: not ours
    cli.ok("datastore", "add", "blob", "az://c", "--connection-string-env", "AZ_VAR")
    show = 'echo "${AZ_VAR-unset} ${AZURE_TENANT_ID-unset}"'

    result = cli.process("run", "--", "sh", "-c", show)
    assert result.code == 0, result.err
    assert result.out == "unset a-tenant\n"
    result = cli.process("run", "--pass-env", "AZ_VAR", "--", "sh", "-c", show)
    assert result.code == 0, result.err
    assert result.out == "the-connection-string a-tenant\n"
    result = cli.process("run", "--pass-env", "NOT_SET", "--", "true")
    assert result.code == 2 and "NOT_SET is not set" in result.err, result.err


@pytest.fixture
def two_datastores(cli: Cli, dataset: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ds:1` of datastore `blob`, read through $AMLFS_TEST_CONNECTION_STRING, and `ts:1`
    of datastore `twin`, the same container read through $TWIN_CONN."""
    monkeypatch.setenv("TWIN_CONN", os.environ[CONNECTION_ENV])
    cli.ok("datastore", "add", "twin", dataset.url, "--connection-string-env", "TWIN_CONN")
    cli.ok("dataset", "register", "ts", "--datastore", "twin", "--path", ".")


def assert_own_variable_only(cli: Cli, expected: dict[str, str]) -> None:
    """Each mount of EXPECTED (mountpoint -> datastore variable) has that variable alone."""
    daemons = {record.mountpoint: record.pid for record in records(cli.home)}
    assert set(expected) <= set(daemons)
    for point, variable in expected.items():
        environ = environ_of(daemons[point])
        assert variable in environ, point
        assert not ({CONNECTION_ENV, "TWIN_CONN"} - {variable}) & set(environ), point


def test_a_mount_daemon_gets_its_own_datastores_secret_and_no_other(
    cli: Cli, two_datastores: None, mounts: Mounts
) -> None:
    blob, twin = mounts.mount("ds:1", *OPTIONS), mounts.mount("ts:1", *OPTIONS)
    out = mounts.output("twin:out")
    assert (twin / "labels.csv").read_bytes() == FILES["labels.csv"]
    assert_own_variable_only(cli, {str(blob): CONNECTION_ENV, str(twin): "TWIN_CONN",
                                   str(out): "TWIN_CONN"})  # fmt: skip


@pytest.fixture
def service(cli: Cli, tmp_path: Path, mounts: Mounts) -> Iterator[Service]:
    """`amlfs daemon` of this test (`mounts` checks FUSE is there), ended at teardown."""
    helper = Service(cli, tmp_path)
    try:
        yield helper
    finally:
        helper.cleanup()


def test_the_service_gives_each_mount_its_own_datastores_secret_only(
    cli: Cli, two_datastores: None, service: Service, tmp_path: Path
) -> None:
    blob, out = tmp_path / "blob", tmp_path / "out"
    for path in (blob, out):
        path.mkdir()
    service.declare(
        {"mountpoint": str(blob), "dataset": "ds:1", "block_size": "64KiB"},
        {"mountpoint": str(out), "output": "twin:service/out"},
    )
    service.start()
    service.wait_for("READY=1")
    assert_own_variable_only(cli, {str(blob): CONNECTION_ENV, str(out): "TWIN_CONN"})
    children = [record.pid for record in records(cli.home)]
    code, err = service.stop()
    assert code == 0, err
    # Ended: a daemon whose last threads are still exiting holds its files a moment longer.
    until(lambda: not any(daemon_alive(pid) for pid in children), "the mounts' daemons end")
