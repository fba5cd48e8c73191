"""The team catalog: several state folders, each standing for a machine, share one
registry through objects in the emulator, with no server."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import adlfs
import fsspec
import pytest

import amlfs
from amlfs.catalog import layout, open_registry
from amlfs.errors import Conflict, UserError
from amlfs.registry.snapshots import Snapshots
from tests.conftest import CONNECTION_ENV, Cli, Container, require
from tests.support.azurite import ACCOUNT_KEY, Azurite
from tests.support.mounts import Mounts
from tests.support.sample import FILES, OPTIONS
from tests.test_pipeline import CHAIN, run_json, steps_of, write
from tests.test_storage_azurite import container_sas

CATALOG = "team:catalog"


@dataclass
class Team:
    """A container with the sample files below data/, and machines that share it."""

    container: Container
    tmp: Path

    def machine(self, name: str, *, attach: bool = True, env_var: str = CONNECTION_ENV) -> Cli:
        cli = Cli(self.tmp / name)
        cli.ok("datastore", "add", "team", self.container.url, "--connection-string-env", env_var)
        if attach:
            cli.ok("catalog", "attach", CATALOG)
        return cli

    def objects(self) -> dict[str, bytes]:
        """Every catalog object, by its name below the catalog, decompressed."""
        fs, root = self.container.fs, f"{self.container.name}/catalog/"
        found = {}
        for path in fs.find(root):
            data = fs.cat_file(path)
            found[path[len(root) :]] = gzip.decompress(data) if path.endswith(".gz") else data
        return found


@pytest.fixture
def team(container: Container, tmp_path: Path) -> Team:
    container.put({f"data/{path}": data for path, data in FILES.items()})
    container.put({"other/x.txt": b"other data\n"})
    return Team(container, tmp_path)


@pytest.fixture
def mounts_of(tmp_path: Path) -> Iterator[Callable[[Cli], Mounts]]:
    """Real mounts made by a given machine's `amlfs mount`; all unmounted at the end."""
    require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    require(shutil.which("fusermount3") is not None, "fusermount3 is missing (apt: fuse3)")
    made: list[Mounts] = []

    def make(cli: Cli) -> Mounts:
        folder = tmp_path / f"mounts-{cli.home.name}"
        folder.mkdir()
        made.append(Mounts(cli, folder))
        return made[-1]

    try:
        yield make
    finally:
        for helper in made:
            helper.cleanup()


def register(cli: Cli, name: str, path: str = "data") -> str:
    return cli.ok("dataset", "register", name, "--datastore", "team", "--path", path).last_line


def start(cli: Cli, *args: str) -> subprocess.Popen:
    """`amlfs ARGS` of machine CLI as a process of its own, running."""
    return subprocess.Popen([sys.executable, "-m", "amlfs", "--home", str(cli.home), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def as_json(cli: Cli, *args: str) -> object:
    return json.loads(cli.ok(*args, "--json").out)


def test_a_version_registered_on_one_machine_mounts_with_its_bytes_on_another(
    team: Team, tmp_path: Path, mounts_of: Callable[[Cli], Mounts]
) -> None:
    first, second = team.machine("first"), team.machine("second")
    assert register(first, "weather") == "weather:1"
    assert as_json(second, "dataset", "show", "weather:1") == as_json(
        first, "dataset", "show", "weather:1"
    )
    helper = mounts_of(second)
    mountpoint = helper.mount("weather:1", *OPTIONS)
    for path, data in FILES.items():
        assert (mountpoint / path).read_bytes() == data


def test_machines_registering_at_once_get_distinct_consecutive_versions(team: Team) -> None:
    machines = [team.machine(f"m{i}") for i in range(3)]
    command = ["dataset", "register", "shared", "--datastore", "team", "--path", "data"]
    procs = [start(m, *command) for m in machines for _process in range(3)]
    refs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        refs.append(out.strip().splitlines()[-1])
    assert sorted(int(ref.split(":")[1]) for ref in refs) == list(range(1, 10))
    for machine in machines:
        listed = as_json(machine, "dataset", "versions", "shared")
        assert [v["version"] for v in listed] == list(range(1, 10))
    objects = team.objects()
    assert sorted(k for k in objects if k.startswith("versions/shared/")) == [
        f"versions/shared/{n:010d}.json.gz" for n in range(1, 10)
    ]


def test_runs_snapshots_and_applies_made_at_once_on_several_machines_are_all_recorded(
    team: Team, tmp_path: Path
) -> None:
    machines = [team.machine(f"m{i}") for i in range(3)]
    register(machines[0], "weather")
    procs = []
    for i, (machine, paths) in enumerate(zip(machines, ("data", "data/train", "data/valid"),
                                             strict=True)):  # fmt: skip
        declaration = tmp_path / f"declared-{i}.yaml"
        declaration.write_text("schema: amlfs/declaration/v2\ndatasets:\n- name: declared\n"
                               f"  datastore: team\n  paths: [{paths}]\n")  # fmt: skip
        procs += [
            start(machine, "run", "--input", "raw=weather:1,mode=download",
                  "--output", "out=team:outputs/{run-id},register=results", "--",
                  "sh", "-c", f"cp {{inputs.raw}}/labels.csv {{outputs.out}}/from-{i}.csv"),
            start(machine, "snapshot", "create", "weather:1", "--name", f"snap-{i}"),
            start(machine, "apply", str(declaration)),
        ]  # fmt: skip
    for proc in procs:
        _out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    for machine in machines:
        for dataset in ("results", "declared"):
            listed = as_json(machine, "dataset", "versions", dataset)
            assert [v["version"] for v in listed] == [1, 2, 3], dataset
        runs = as_json(machine, "runs", "list")
        assert sorted(o["version"] for r in runs for o in r["outputs"]) == [
            "results:1", "results:2", "results:3",
        ]  # fmt: skip
        assert all(r["state"] == "succeeded" for r in runs)
        snapshots = as_json(machine, "snapshot", "list", "weather")
        assert sorted(s["name"] for s in snapshots) == ["snap-0", "snap-1", "snap-2"]


def test_a_run_and_its_lineage_recorded_on_one_machine_show_on_another(team: Team) -> None:
    first, second = team.machine("first"), team.machine("second")
    register(first, "weather")
    first.ok(
        "run", "--input", "raw=weather:1,mode=download",
        "--output", "out=team:outputs/{run-id},register=weather-clean", "--",
        "sh", "-c", "cp {inputs.raw}/labels.csv {outputs.out}/clean.csv",
    )  # fmt: skip
    assert as_json(second, "lineage", "weather-clean:1") == as_json(
        first, "lineage", "weather-clean:1"
    )
    (run,) = as_json(second, "runs", "list")
    assert run["inputs"] == [{"name": "raw", "version": "weather:1", "mode": "download"}]
    assert run["outputs"][0]["version"] == "weather-clean:1"
    assert as_json(second, "runs", "show", run["id"]) == as_json(first, "runs", "show", run["id"])


def test_attach_publishes_a_registry_built_before_and_another_machine_sees_all_of_it(
    team: Team,
) -> None:
    first = team.machine("first", attach=False)
    register(first, "weather")
    first.ok("dataset", "sample", "weather:1", "--fraction", "0.5", "--register", "half")
    first.ok("snapshot", "create", "weather:1", "--name", "frozen",
             "--copy-to", "team:snapshots/frozen")  # fmt: skip
    first.ok(
        "run", "--input", "raw=weather:1@frozen,mode=download", "--",
        "sh", "-c", "test -f {inputs.raw}/labels.csv",
    )  # fmt: skip
    attached = as_json(first, "catalog", "attach", CATALOG)
    assert attached["created"] is True and attached["published"] >= 6

    second = team.machine("second")
    for command in (
        ("dataset", "list"), ("dataset", "versions", "weather"), ("dataset", "show", "half"),
        ("snapshot", "list"), ("runs", "list"), ("lineage", "weather:1"),
    ):  # fmt: skip
        assert as_json(second, *command) == as_json(first, *command), command
    # Each machine keeps its own definition of the catalog's datastore (made when it was
    # added there): the same URL and credential source.
    assert [{**ds, "created_at": ""} for ds in as_json(second, "datastore", "list")] == [
        {**ds, "created_at": ""} for ds in as_json(first, "datastore", "list")
    ]
    files = as_json(second, "dataset", "show", "weather:1@frozen", "--files")
    assert files == as_json(first, "dataset", "show", "weather:1@frozen", "--files")


def test_attach_refuses_a_registry_that_contradicts_the_catalog(team: Team) -> None:
    first = team.machine("first")
    register(first, "weather")
    before = team.objects()

    other = team.machine("other", attach=False)
    register(other, "weather", "other")  # weather:1 here pins other files
    result = other("catalog", "attach", CATALOG)
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "weather:1 pins other files here than in the catalog" in result.err
    assert "not attached" in other.ok("catalog", "status").out
    assert team.objects() == before

    elsewhere = Cli(team.tmp / "elsewhere")
    elsewhere.ok("datastore", "add", "team", f"{team.container.url}/other",
                 "--connection-string-env", CONNECTION_ENV)  # fmt: skip
    elsewhere.ok("datastore", "add", "home", team.container.url,
                 "--connection-string-env", CONNECTION_ENV)  # fmt: skip
    result = elsewhere("catalog", "attach", "home:catalog")
    assert result.code == 2
    assert "datastore 'team' is" in result.err and "in the catalog" in result.err


def test_no_secret_is_ever_written_to_the_catalog(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    sas = container_sas(team.container)
    monkeypatch.setenv("AMLFS_TEST_READ_ONLY", _sas_connection_string(team, sas))
    first = team.machine("first")
    register(first, "weather")
    first.ok("datastore", "add", "readers", team.container.url,
             "--connection-string-env", "AMLFS_TEST_READ_ONLY")  # fmt: skip
    first.ok("run", "--input", "raw=weather:1,mode=download", "--",
             "sh", "-c", "env > /dev/null")  # fmt: skip
    objects = team.objects()
    assert any(k.startswith("datastores/readers") for k in objects)
    secrets = [ACCOUNT_KEY, sas, sas.split("sig=")[1], os.environ[CONNECTION_ENV]]
    for key, data in objects.items():
        text = data.decode()
        for secret in secrets:
            assert secret not in text, f"a secret in {key}"


def test_read_only_catalog_credentials_mount_and_download_but_refuse_writes(
    team: Team, tmp_path: Path, mounts_of: Callable[[Cli], Mounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = team.machine("first")
    register(first, "weather")
    monkeypatch.setenv("AMLFS_TEST_READ_ONLY", _sas_connection_string(
        team, container_sas(team.container)))  # fmt: skip
    reader = team.machine("reader", env_var="AMLFS_TEST_READ_ONLY")
    assert [v["version"] for v in as_json(reader, "dataset", "versions", "weather")] == [1]

    reader.ok("download", "weather:1", str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "labels.csv").read_bytes() == FILES["labels.csv"]
    helper = mounts_of(reader)
    assert (helper.mount("weather:1", *OPTIONS) / "labels.csv").read_bytes() == FILES["labels.csv"]

    before = team.objects()
    result = reader("dataset", "register", "weather", "--datastore", "team", "--path", "data")
    assert result.code == 1
    assert result.err.count("\n") == 1
    assert "access denied" in result.err and "catalog" in result.err
    assert team.objects() == before
    assert [v["version"] for v in as_json(reader, "dataset", "versions", "weather")] == [1]


def _sas_connection_string(team: Team, sas: str) -> str:
    endpoint = next(part for part in os.environ[CONNECTION_ENV].split(";")
                    if part.startswith("BlobEndpoint="))  # fmt: skip
    return f"{endpoint};SharedAccessSignature={sas}"


def test_with_the_catalog_down_reads_answer_from_the_last_copy_and_writes_fail_cleanly(
    own_emulator: Azurite, tmp_path: Path, mounts_of: Callable[[Cli], Mounts]
) -> None:
    fs = adlfs.AzureBlobFileSystem(connection_string=own_emulator.connection_string,
                                   skip_instance_cache=True)  # fmt: skip
    bucket = f"c{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    files = tmp_path / "files"
    (files / "data").mkdir(parents=True)
    for path, data in FILES.items():
        (files / "data" / path).parent.mkdir(parents=True, exist_ok=True)
        (files / "data" / path).write_bytes(data)

    def machine(name: str) -> Cli:
        cli = Cli(tmp_path / name)
        cli.ok("datastore", "add", "cat", f"az://{bucket}", "--connection-string-env",
               CONNECTION_ENV)  # fmt: skip
        cli.ok("datastore", "add", "files", files.as_uri())
        cli.ok("catalog", "attach", "cat:team")
        return cli

    first, second = machine("first"), machine("second")
    first.ok("dataset", "register", "weather", "--datastore", "files", "--path", "data")
    assert "weather" in second.ok("dataset", "list").out  # second's copy now has it

    own_emulator.stop()
    listed = second("dataset", "list")
    assert listed.code == 0 and "weather" in listed.out
    assert listed.err.startswith("amlfs: warning: the catalog at cat:team cannot be read")
    assert "answering from this machine's copy" in listed.err
    helper = mounts_of(second)
    mountpoint = helper.mount("weather:1", *OPTIONS)
    assert (mountpoint / "labels.csv").read_bytes() == FILES["labels.csv"]
    assert "reachable:    no" in second.ok("catalog", "status").out

    failed = second("dataset", "register", "weather", "--datastore", "files", "--path", "data")
    assert failed.code == 1
    assert failed.err.startswith("amlfs: error: ") and failed.err.count("\n") == 1
    assert [v["version"] for v in as_json(second, "dataset", "versions", "weather")] == [1]

    own_emulator.start()
    assert "reachable:    yes" in second.ok("catalog", "status").out
    assert register_files(second) == "weather:2"
    assert [v["version"] for v in as_json(first, "dataset", "versions", "weather")] == [1, 2]


def register_files(cli: Cli) -> str:
    return cli.ok("dataset", "register", "weather", "--datastore", "files", "--path",
                  "data").last_line  # fmt: skip


def test_a_detached_registry_keeps_its_copy_and_stops_sharing(team: Team) -> None:
    first, second = team.machine("first"), team.machine("second")
    register(first, "weather")
    assert "weather" in second.ok("dataset", "list").out
    assert "detached from team:catalog" in second.ok("catalog", "detach").out
    assert [v["version"] for v in as_json(second, "dataset", "versions", "weather")] == [1]
    register(first, "weather")
    assert [v["version"] for v in as_json(second, "dataset", "versions", "weather")] == [1]
    assert register(second, "local-only") == "local-only:1"
    assert not any("local-only" in key for key in team.objects())


def test_a_pipeline_and_its_prune_on_one_machine_show_on_another(
    team: Team, tmp_path: Path
) -> None:
    first, second = team.machine("first"), team.machine("second")
    register(first, "ds")
    chain = CHAIN.replace("blob:", "team:")
    steps = steps_of(run_json(first, write(tmp_path / "pipe", chain)))
    assert as_json(second, "pipeline", "runs") == as_json(first, "pipeline", "runs")
    (run,) = as_json(second, "pipeline", "runs")
    assert as_json(second, "pipeline", "show", run["id"]) == as_json(
        first, "pipeline", "show", run["id"]
    )
    time.sleep(1.1)  # --older-than 0: ended before now, to the second
    first.ok("pipeline", "prune", "--older-than", "0")
    intermediate = steps["prep"]["outputs"]["clean"]
    refused = second("download", intermediate, str(tmp_path / "pruned"))
    assert refused.code == 2 and "was pruned" in refused.err
    assert as_json(second, "dataset", "show", intermediate)["pruned_at"]


def test_a_change_made_elsewhere_meanwhile_is_refused_not_overwritten(team: Team) -> None:
    first, second = team.machine("first"), team.machine("second")
    register(first, "weather")
    with open_registry(second.home) as stale:
        version = stale.resolve("weather")  # caught up with weather here, once
        first.ok("snapshot", "create", "weather:1", "--name", "frozen")  # then this
        with pytest.raises(Conflict, match="changed by another machine meanwhile"):
            Snapshots(stale).record(version, "frozen", {"taken": "here"})
        assert not Snapshots(stale).exists(version, "frozen")
    with open_registry(first.home) as one, open_registry(second.home) as other:
        for registry in (one, other):
            registry.list_datastores()  # both catch up with the datastores now
        changed = replace(one.get_datastore("team"), credential_env="ONE_CONN")
        assert one.put_datastore(changed) == "updated"
        with pytest.raises(Conflict, match=r"datastores/team\.json"):
            other.put_datastore(replace(changed, credential_env="OTHER_CONN"))
    assert json.loads(team.objects()["datastores/team.json"])["credential_env"] == "ONE_CONN"
    assert as_json(second, "snapshot", "show", "weather:1@frozen")["name"] == "frozen"


def test_a_document_that_is_not_what_its_name_says_is_left_out_and_named(
    team: Team, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = team.machine("first"), team.machine("second")
    register(first, "weather")
    root = f"{team.container.name}/catalog"
    good = team.objects()["versions/weather/0000000001.json.gz"]
    evil = json.loads(good) | {"dataset": "evil"}
    team.container.fs.pipe({
        f"{root}/versions/evil/0000000001.json.gz": gzip.compress(
            json.dumps(json.loads(good) | {"dataset": "evil", "files": [
                ["../outside.txt", 1, '"x"', None, None]]}).encode()),
        f"{root}/versions/moved/0000000001.json.gz": gzip.compress(json.dumps(evil).encode()),
    })  # fmt: skip
    register(first, "weather")
    listed = {d["dataset"] for d in as_json(second, "dataset", "list")}
    assert listed == {"weather"}
    assert [v["version"] for v in as_json(second, "dataset", "versions", "weather")] == [1, 2]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "versions/moved/0000000001.json.gz: holds another record's document" in warned
    assert "'..' component" in warned


def test_catalog_names_parse_back_and_documents_round_trip() -> None:
    assert layout.parse(layout.version_key("weather", 3)) == (
        "versions", {"dataset": "weather", "number": "0000000003"})  # fmt: skip
    assert layout.parse(layout.snapshot_key("w", 12, "s")).parts["name"] == "s"
    assert layout.parse(layout.run_key("20261203-112147-603464")).kind == "runs"
    assert layout.parse("versions/weather/3.json.gz") is None  # not zero-padded: not ours
    assert layout.parse("amlfs-catalog.json") is None
    key = layout.version_key("weather", 1)
    document = {"dataset": "weather", "version": 1, "files": [["a", 1, '"e"', None, None]]}
    assert layout.decode(key, layout.encode(key, document)) == document
    with pytest.raises(UserError, match="is damaged"):
        layout.decode(key, b"not gzip")


def test_python_sees_what_another_machine_registered(team: Team) -> None:
    first, second = team.machine("first"), team.machine("second")
    register(first, "weather")
    dataset = amlfs.Dataset.get("weather", home=second.home)
    assert dataset.ref == "weather:1"
    assert sorted(dataset.files) == sorted(FILES)
    with dataset.open("labels.csv") as f:
        assert f.read() == FILES["labels.csv"]
    fs = fsspec.filesystem("amlfs", home=str(second.home), skip_instance_cache=True)
    assert fs.cat_file("weather:1/train/nested/deeper/c.txt") == FILES["train/nested/deeper/c.txt"]
