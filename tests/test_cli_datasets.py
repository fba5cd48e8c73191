"""The `datastore`, `dataset` and `apply` commands end to end on the Azurite emulator."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import CONNECTION_ENV, Cli, Container

FILES = {
    "Weather/week27/mon.csv": b"1,2,3\n",
    "Weather/week27/tue.csv": b"4,5,6\n" * 100,
    "Weather/week28/mon.csv": b"7,8,9\n",
    "Weather/week28/deep/er/x.parquet": bytes(range(256)) * 40,
    "Other/readme.md": b"# other\n",
}


@pytest.fixture
def blob(cli: Cli, container: Container) -> Container:
    """A container with FILES, registered as datastore `blob`."""
    container.put(FILES)
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    return container


def registry_dump(cli: Cli) -> list[str]:
    with sqlite3.connect(cli.home / "registry.db") as conn:
        return list(conn.iterdump())


def show(cli: Cli, ref: str) -> dict:
    return json.loads(cli.ok("dataset", "show", ref, "--json", "--files").out)


# -- datastores -------------------------------------------------------------------


def test_datastores_are_added_listed_shown_and_removed(cli: Cli, tmp_path: Path) -> None:
    cli.ok("datastore", "add", "local", f"file://{tmp_path}")
    cli.ok("datastore", "add", "az1", "az://c/p", "--connection-string-env", "SOME_VAR")
    listed = json.loads(cli.ok("datastore", "list", "--json").out)
    assert [(d["name"], d["credential"], d["credential_env"]) for d in listed] == [
        ("az1", "connection-string-env", "SOME_VAR"),
        ("local", "none", None),
    ]
    shown = json.loads(cli.ok("datastore", "show", "az1", "--json").out)
    assert shown["url"] == "az://c/p"
    cli.ok("datastore", "remove", "az1")
    assert "az1" not in cli.ok("datastore", "list").out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "x", "no-protocol"], "needs a protocol"),
        (["add", "x", "nosuch://a"], "unsupported protocol"),
        (["add", "bad name", "file:///tmp"], "invalid datastore name"),
        (["add", "x", "file:///tmp", "--anonymous"], "apply to Azure URLs"),
        (["add", "x", "az://c", "--anonymous", "--sas-token-env", "V"], "at most one"),
        (["add", "x", "az://c", "--account-key-env", "K"], "need the storage account"),
        (["add", "x", "az://c", "--sas-token-env", "1BAD"], "not an environment variable"),
        (["show", "nope"], "no datastore named 'nope'"),
        (["remove", "nope"], "no datastore named 'nope'"),
        (["add", "x"], "Missing argument 'URL'"),
    ],
)
def test_bad_datastore_input_is_one_line_and_exit_2(
    cli: Cli, args: list[str], message: str
) -> None:
    result = cli("datastore", *args)
    assert result.code == 2
    assert result.err.startswith("amlfs: error: ") and message in result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err


def test_account_name_may_come_from_the_url(cli: Cli) -> None:
    url = "abfs://data@myaccount.dfs.core.windows.net/prefix"
    cli.ok("datastore", "add", "lake", url, "--account-key-env", "LAKE_KEY")
    assert json.loads(cli.ok("datastore", "show", "lake", "--json").out)["account_name"] == (
        "myaccount"
    )


# -- registration -----------------------------------------------------------------


def test_register_pins_every_file_relative_to_the_common_folder(cli: Cli, blob: Container) -> None:
    result = cli.ok(
        "dataset", "register", "weather", "--datastore", "blob",
        "--path", "Weather/week27", "--path", "Weather/week28/",
        "--description", "two weeks", "--tag", "owner=climate",
    )  # fmt: skip
    assert result.last_line == "weather:1"
    version = show(cli, "weather:1")
    assert version["root"] == "Weather"
    assert version["description"] == "two weeks" and version["tags"] == {"owner": "climate"}
    listed = {f["path"]: f for f in version["files"]}
    expected = {k.removeprefix("Weather/"): v for k, v in FILES.items() if "Weather" in k}
    assert set(listed) == set(expected)
    for path, data in expected.items():
        info = blob.fs.info(f"{blob.name}/Weather/{path}")
        assert listed[path]["size"] == len(data)
        assert listed[path]["etag"] == info["etag"]
        assert listed[path]["md5"] == __import__("hashlib").md5(data).hexdigest()
    assert version["file_count"] == 4 and version["total_bytes"] == sum(map(len, expected.values()))


def test_files_globs_and_overlaps_are_listed_once(cli: Cli, blob: Container) -> None:
    cli.ok(
        "dataset", "register", "mixed", "--datastore", "blob",
        "--path", "Weather/*/mon.csv", "--path", "Weather/week27/mon.csv",
        "--path", "Weather/week28",
    )  # fmt: skip
    paths = [f["path"] for f in show(cli, "mixed")["files"]]
    assert sorted(paths) == ["week27/mon.csv", "week28/deep/er/x.parquet", "week28/mon.csv"]


def test_a_single_folder_is_the_root_of_its_version(cli: Cli, blob: Container) -> None:
    cli.ok("dataset", "register", "one", "--datastore", "blob", "--path", "Weather/week27")
    assert sorted(f["path"] for f in show(cli, "one")["files"]) == ["mon.csv", "tue.csv"]


def test_each_registration_is_the_next_version(cli: Cli, blob: Container) -> None:
    for expected in ("w:1", "w:2"):
        out = cli.ok("dataset", "register", "w", "--datastore", "blob", "--path", "Weather")
        assert out.last_line == expected
    versions = json.loads(cli.ok("dataset", "versions", "w", "--json").out)
    assert [v["version"] for v in versions] == [1, 2]
    listed = json.loads(cli.ok("dataset", "list", "--json").out)
    assert [(d["dataset"], d["version"]) for d in listed] == [("w", 2)]
    assert show(cli, "w")["version"] == 2 and show(cli, "w:latest")["version"] == 2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--datastore", "blob", "--path", "Nowhere"], 2, "'Nowhere' matched no files"),
        (["--datastore", "blob", "--path", "Weather", "--path", "Nope/*"], 2, "matched no files"),
        (["--datastore", "nope", "--path", "Weather"], 2, "no datastore named 'nope'"),
        (["--datastore", "blob", "--path", "../up"], 2, "'..' component"),
        (["--datastore", "blob", "--path", "/abs"], 2, "is absolute"),
        (["--datastore", "blob", "--path", "Weather", "--tag", "novalue"], 2, "KEY=VALUE"),
        (["--datastore", "blob"], 2, "Missing option '--path'"),
    ],
)
def test_a_failed_registration_registers_nothing(
    cli: Cli, blob: Container, args: list[str], code: int, message: str
) -> None:
    before = registry_dump(cli)
    result = cli("dataset", "register", "w", *args)
    assert (result.code, result.err.count("\n")) == (code, 1), result.err
    assert message in result.err
    assert registry_dump(cli) == before


def test_an_unreachable_store_is_a_runtime_error(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, free_port

    monkeypatch.setenv(
        "DOWN_CONN",
        f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{free_port()}/{ACCOUNT};",
    )
    cli.ok("datastore", "add", "down", "az://c", "--connection-string-env", "DOWN_CONN")
    before = registry_dump(cli)
    result = cli("dataset", "register", "w", "--datastore", "down", "--path", "x")
    assert result.code == 1 and "cannot list x" in result.err
    assert registry_dump(cli) == before


def test_a_missing_version_is_a_clear_error(cli: Cli, blob: Container) -> None:
    cli.ok("dataset", "register", "w", "--datastore", "blob", "--path", "Weather")
    for ref, message in [("w:2", "has no version 2"), ("x", "no dataset named 'x'"),
                         ("w:zero", "invalid version")]:  # fmt: skip
        result = cli("dataset", "show", ref)
        assert result.code == 2 and message in result.err


# -- verification -----------------------------------------------------------------


def test_verify_passes_then_reports_changed_and_missing_files(cli: Cli, blob: Container) -> None:
    cli.ok("dataset", "register", "w", "--datastore", "blob", "--path", "Weather")
    assert "4 files checked, 0 changed, 0 missing" in cli.ok("dataset", "verify", "w").out
    blob.put({"Weather/week27/mon.csv": b"rewritten\n"})
    blob.fs.rm(f"{blob.name}/Weather/week28/mon.csv")
    result = cli("dataset", "verify", "w:1")
    assert result.code == 1
    assert "changed  week27/mon.csv" in result.out and "missing  week28/mon.csv" in result.out
    report = json.loads(cli("dataset", "verify", "w", "--json").out)
    assert not report["ok"] and report["missing"] == ["week28/mon.csv"]
    assert [c["path"] for c in report["changed"]] == ["week27/mon.csv"]


def test_verify_lists_instead_of_asking_per_file(cli: Cli, blob: Container) -> None:
    """300 files are verified with a handful of HTTP requests, not one per file."""
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.core.rest import HttpRequest

    blob.put({f"many/{i:04}.bin": b"x" for i in range(300)})
    cli.ok("dataset", "register", "many", "--datastore", "blob", "--path", "many")
    requests: list[str] = []
    real_send = AioHttpTransport.send

    async def counting_send(self: AioHttpTransport, request: HttpRequest, **kwargs: object):
        requests.append(request.url)
        return await real_send(self, request, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AioHttpTransport, "send", counting_send)
        assert cli("dataset", "verify", "many").code == 0
    assert 1 <= len(requests) <= 5, requests


# -- manifests --------------------------------------------------------------------


def test_export_and_import_reproduce_a_version_elsewhere(
    cli: Cli, blob: Container, tmp_path: Path
) -> None:
    cli.ok("dataset", "register", "w", "--datastore", "blob", "--path", "Weather")
    manifest = tmp_path / "w.yaml"
    cli.ok("dataset", "export", "w:1", "-o", str(manifest))
    assert cli.ok("dataset", "export", "w:1").out == manifest.read_text()

    other = Cli(tmp_path / "other-home")
    other.ok("datastore", "add", "blob", blob.url, "--connection-string-env", CONNECTION_ENV)
    assert other.ok("dataset", "import", str(manifest)).last_line == "w:1"
    again = other.ok("dataset", "import", str(manifest))
    assert again.last_line == "w:1" and "unchanged" in again.err
    assert other.ok("dataset", "import", str(manifest), "--name", "copy").last_line == "copy:1"
    mine, theirs = show(cli, "w:1"), show(other, "w:1")
    assert mine["files"] == theirs["files"]
    assert mine["manifest_sha256"] == theirs["manifest_sha256"]
    assert other.ok("dataset", "verify", "w").code == 0


def test_import_refuses_a_manifest_for_another_url(cli: Cli, tmp_path: Path) -> None:
    cli.ok("datastore", "add", "blob", "az://elsewhere", "--connection-string-env", "X")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        textwrap.dedent("""\
        schema: amlfs/manifest/v1
        dataset: w
        datastore: blob
        datastore_url: az://original
        root: ''
        sources: ['']
        files: [{path: a, size: 1, etag: e}]
        """)
    )
    result = cli("dataset", "import", str(manifest))
    assert result.code == 2 and "was made for 'az://original'" in result.err


@pytest.mark.parametrize(
    "body",
    [
        "schema: amlfs/manifest/v1\ndataset: w\n",
        "files:\n- {path: /etc/shadow, size: 1, etag: e}\n",
        ": [\n",
    ],
)
def test_a_bad_manifest_leaves_the_registry_untouched(cli: Cli, tmp_path: Path, body: str) -> None:
    cli.ok("datastore", "add", "blob", "az://c", "--connection-string-env", "X")
    before = registry_dump(cli)
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    result = cli("dataset", "import", str(bad))
    assert result.code == 2 and result.err.startswith(f"amlfs: error: {bad}:")
    assert registry_dump(cli) == before


# -- apply ------------------------------------------------------------------------


def declaration(url: str, paths: list[str]) -> str:
    return textwrap.dedent(f"""\
        schema: amlfs/declaration/v1
        datastores:
        - name: blob
          url: {url}
          connection_string_env: {CONNECTION_ENV}
        datasets:
        - name: weather
          datastore: blob
          paths: {json.dumps(paths)}
          description: declared
        """)


def test_apply_is_idempotent_and_a_changed_source_list_is_a_new_version(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    container.put(FILES)
    file = tmp_path / "amlfs.yaml"
    file.write_text(declaration(container.url, ["Weather/week27"]))
    first = cli.ok("apply", str(file)).out
    assert "datastore blob: created" in first and "dataset weather: registered (weather:1)" in first
    before = registry_dump(cli)
    second = cli.ok("apply", str(file)).out
    assert "datastore blob: unchanged" in second and "weather: unchanged (weather:1)" in second
    assert registry_dump(cli) == before

    file.write_text(declaration(container.url, ["Weather/week27", "Weather/week28"]))
    assert "registered (weather:2)" in cli.ok("apply", str(file)).out
    assert show(cli, "weather:2")["file_count"] == 4


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("paths: [", 'paths: ["/etc", '), "absolute"),
        (("description: declared", "description: declared\n  owner: me"), "Extra inputs"),
        (("Weather/week27", "Weather/nothing"), "matched no files"),
        (("datastore: blob", "datastore: ghost"), "no datastore named 'ghost'"),
        (("url: az://", "url: nosuch://"), "unsupported protocol"),
    ],
)
def test_a_bad_declaration_writes_nothing(
    cli: Cli, container: Container, tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    container.put(FILES)
    cli.ok("datastore", "list")  # creates the registry
    before = registry_dump(cli)
    file = tmp_path / "amlfs.yaml"
    file.write_text(declaration(container.url, ["Weather/week27"]).replace(*edit))
    result = cli("apply", str(file))
    assert result.code == 2 and message in result.err, result.err
    assert registry_dump(cli) == before


# -- concurrency ------------------------------------------------------------------


def test_concurrent_registrations_get_distinct_consecutive_versions(
    cli: Cli, blob: Container
) -> None:
    n = 8
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "amlfs", "--home", str(cli.home), "dataset", "register",
             "race", "--datastore", "blob", "--path", "Weather"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(n)
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outputs]
    refs = sorted(int(out.strip().splitlines()[-1].split(":")[1]) for out, _ in outputs)
    assert refs == list(range(1, n + 1))
    versions = json.loads(cli.ok("dataset", "versions", "race", "--json").out)
    assert [v["version"] for v in versions] == list(range(1, n + 1))
    assert all(v["file_count"] == 4 for v in versions)


def test_register_shows_a_progress_line_on_a_terminal_only(cli: Cli, blob: Container) -> None:
    args = ["dataset", "register", "w", "--datastore", "blob", "--path", "Weather"]
    assert "listing" not in cli.process(*args).err  # not a terminal: no progress line
    assert "listing" in run_in_terminal([sys.executable, "-m", "amlfs", "--home",
                                         str(cli.home), *args])  # fmt: skip


def run_in_terminal(command: list[str]) -> str:
    """Run COMMAND with a 120x40 pseudo-terminal as stdout and stderr; return what it wrote."""
    import fcntl
    import pty
    import struct
    import termios

    main_fd, terminal_fd = pty.openpty()
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(command, stdout=terminal_fd, stderr=terminal_fd)
    os.close(terminal_fd)
    output = b""
    while True:
        try:
            data = os.read(main_fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        output += data
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0, output
    return output.decode(errors="replace")
