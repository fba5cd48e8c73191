"""`amlfs dataset sample|split|filter` end to end on the Azurite emulator: subsets pin the
parent's files (and mount and verify as such), are recorded with their parent, and bad
input registers nothing."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.mounts import Mounts
from tests.support.sample import FILES as SAMPLE_FILES
from tests.support.sample import OPTIONS

FILES = {f"days/{i:03d}.csv": f"{i},{i * i}\n".encode() * (i + 1) for i in range(80)}
FILES |= {f"days/raw/{i:03d}.bin": bytes(range(256)) * (i + 1) for i in range(20)}
FILES |= {"README.md": b"# weather\n"}


@pytest.fixture
def weather(cli: Cli, container: Container) -> Container:
    """FILES registered as weather:1 of datastore `blob`."""
    container.put(FILES)
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    assert cli.ok("dataset", "register", "weather", "--datastore", "blob", "--path", ".").last_line
    return container


def registry_dump(cli: Cli) -> list[str]:
    with sqlite3.connect(cli.home / "registry.db") as conn:
        return list(conn.iterdump())


def shown(cli: Cli, ref: str) -> dict:
    return json.loads(cli.ok("dataset", "show", ref, "--json", "--files").out)


def pins(cli: Cli, ref: str) -> dict[str, dict]:
    return {f["path"]: f for f in shown(cli, ref)["files"]}


def test_a_sample_is_the_same_for_a_seed_and_pins_the_parents_files(
    cli: Cli, weather: Container
) -> None:
    first = cli.ok("dataset", "sample", "weather:1", "--fraction", "0.3", "--seed", "11",
                   "--register", "small")  # fmt: skip
    second = cli.ok("dataset", "sample", "weather", "--fraction", "0.3", "--seed", "11",
                    "--register", "small")  # fmt: skip
    other_seed = cli.ok("dataset", "sample", "weather", "--fraction", "0.3", "--seed", "12",
                        "--register", "small")  # fmt: skip
    assert (first.last_line, second.last_line, other_seed.last_line) == (
        "small:1", "small:2", "small:3"
    )  # fmt: skip
    kept, parent = pins(cli, "small:1"), pins(cli, "weather:1")
    assert kept == pins(cli, "small:2") != pins(cli, "small:3")
    assert 0 < len(kept) < len(parent)
    assert all(parent[path] == pinned for path, pinned in kept.items())
    assert {k: shown(cli, "small:1")[k] for k in ("datastore", "root", "sources")} == {
        k: shown(cli, "weather:1")[k] for k in ("datastore", "root", "sources")
    }


def test_files_added_to_the_parent_never_move_old_ones_in_or_out(
    cli: Cli, weather: Container
) -> None:
    cli.ok("dataset", "sample", "weather:1", "--fraction", "0.4", "--register", "small")
    weather.put({f"days/later/{i:03d}.csv": b"new\n" for i in range(60)})
    cli.ok("dataset", "register", "weather", "--datastore", "blob", "--path", ".")
    again = cli.ok("dataset", "sample", "weather:2", "--fraction", "0.4", "--register", "small")
    assert again.last_line == "small:2"
    before, after = set(pins(cli, "small:1")), set(pins(cli, "small:2"))
    assert {path for path in after if path in FILES} == before
    assert after - before and all(path.startswith("days/later/") for path in after - before)


def test_split_parts_are_disjoint_make_the_parent_and_print_both_refs(
    cli: Cli, weather: Container
) -> None:
    result = cli.ok("dataset", "split", "weather", "--fraction", "0.8", "--seed", "3",
                    "--register", "train", "--register", "test")  # fmt: skip
    assert result.out.strip().splitlines()[-2:] == ["train:1", "test:1"]
    train, test = pins(cli, "train:1"), pins(cli, "test:1")
    assert not train.keys() & test.keys()
    assert train | test == pins(cli, "weather:1")
    sample = cli.ok("dataset", "sample", "weather", "--fraction", "0.8", "--seed", "3",
                    "--register", "small")  # fmt: skip
    assert pins(cli, sample.last_line) == train


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--include", "**/*.bin"], {p for p in FILES if p.endswith(".bin")}),
        (["--include", "days", "--exclude", "days/raw"],
         {p for p in FILES if p.endswith(".csv")}),
        (["--min-size", "5KiB"], {p for p, data in FILES.items() if len(data) >= 5 * 1024}),
        (["--max-size", "0.1kB"], {p for p, data in FILES.items() if len(data) <= 100}),
        (["--modified-after", "2000-01-01", "--modified-before", "2999-01-01T00:00:00Z"],
         set(FILES)),
        (["--include", "days/*.csv", "--skip", "10", "--take", "5"],
         {f"days/{i:03d}.csv" for i in range(10, 15)}),
    ],
)  # fmt: skip
def test_filters_keep_what_they_say(
    cli: Cli, weather: Container, options: list[str], expected: set[str]
) -> None:
    result = cli.ok("dataset", "filter", "weather", *options, "--register", "picked")
    assert result.last_line == "picked:1"
    assert set(pins(cli, "picked:1")) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "weather", "--fraction", "0", "--register", "x"], "fraction"),
        (["sample", "weather", "--fraction", "1", "--register", "x"], "fraction"),
        (["sample", "weather", "--fraction", "-0.5", "--register", "x"], "fraction"),
        (["sample", "weather", "--fraction", "half", "--register", "x"], "not a valid float"),
        (["sample", "weather", "--fraction", "0.5", "--seed", "-1", "--register", "x"], "seed"),
        (["sample", "weather", "--fraction", "1e-9", "--register", "x"], "keeps no files"),
        (["sample", "weather", "--fraction", "0.5", "--register", "weather"], "itself"),
        (["sample", "weather", "--fraction", "0.5", "--register", "bad name"], "invalid dataset"),
        (["sample", "weather", "--fraction", "0.5", "--register", "plain"], "from storage"),
        (["sample", "weather:9", "--fraction", "0.5", "--register", "x"], "no version 9"),
        (["split", "weather", "--fraction", "0.5", "--register", "a", "--register", "a"],
         "give two names"),
        (["split", "weather", "--fraction", "0.5", "--register", "a"], "give --register twice"),
        (["split", "weather", "--fraction", "0.5", "--register", "a", "--register", "plain"],
         "from storage"),
        (["filter", "weather", "--include", "a**", "--register", "x"], "bad glob"),
        (["filter", "weather", "--exclude", "/abs", "--register", "x"], "bad glob"),
        (["filter", "weather", "--min-size", "ten", "--register", "x"], "not a size"),
        (["filter", "weather", "--modified-after", "last week", "--register", "x"], "ISO 8601"),
        (["filter", "weather", "--modified-before", "2000-01-01", "--register", "x"],
         "keeps no files"),
        (["filter", "weather", "--take", "0", "--register", "x"], "--take"),
        (["filter", "weather", "--include", "nothing/here", "--register", "x"], "keeps no files"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_registers_nothing(
    cli: Cli, weather: Container, args: list[str], message: str
) -> None:
    cli.ok("dataset", "register", "plain", "--datastore", "blob", "--path", "README.md")
    before = registry_dump(cli)
    result = cli("dataset", *args)
    assert result.code == 2, result
    assert result.err.startswith("amlfs: error: ") and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert registry_dump(cli) == before


def test_show_and_lineage_name_the_parent_and_the_operation(cli: Cli, weather: Container) -> None:
    cli.ok("dataset", "filter", "weather", "--include", "**/*.csv", "--min-size", "100B",
           "--register", "csv")  # fmt: skip
    cli.ok("dataset", "sample", "csv", "--fraction", "0.5", "--seed", "4", "--register", "few")
    assert shown(cli, "few")["derived_from"] == {
        "parent": "csv:1", "operation": "sample", "parameters": {"fraction": 0.5, "seed": 4}
    }  # fmt: skip
    assert shown(cli, "weather")["derived_from"] is None
    text = cli.ok("dataset", "show", "csv").out
    assert 'derived:      filter of weather:1 (include=["**/*.csv"], min_size=100)' in text

    lineage = cli.ok("lineage", "few").out
    assert lineage.splitlines()[:4] == [
        "few:1",
        "  sample of csv:1 (fraction=0.5, seed=4)",
        '    filter of weather:1 (include=["**/*.csv"], min_size=100)',
        "      registered directly, not by a run",
    ]
    data = json.loads(cli.ok("lineage", "few", "--json").out)
    assert data["derived_from"]["version"] == "csv:1"
    assert data["derived_from"]["derived_from"]["version"] == "weather:1"
    parent = json.loads(cli.ok("lineage", "weather", "--json").out)
    assert parent["derived_into"] == [{
        "version": "csv:1", "operation": "filter",
        "parameters": {"include": ["**/*.csv"], "min_size": 100},
    }]  # fmt: skip
    assert "filter into csv:1" in cli.ok("lineage", "weather").out


def declaration(url: str, sample: str) -> str:
    return textwrap.dedent(f"""\
        schema: amlfs/declaration/v2
        datastores:
        - name: blob
          url: {url}
          connection_string_env: {CONNECTION_ENV}
        datasets:
        - name: weather
          datastore: blob
          paths: [days]
        - name: weather-small
          from: {{dataset: weather, sample: {sample}}}
        - name: weather-train
          from: {{dataset: weather, split: {{fraction: 0.7, part: first}}}}
        - name: weather-test
          from: {{dataset: weather, split: {{fraction: 0.7, part: second}}}}
        - name: weather-bins
          from:
            dataset: weather
            filter: {{include: ["**/*.bin"], min_size: 1KiB, modified_after: 2000-01-01}}
        """)


def test_apply_declares_subsets_idempotently_and_follows_the_parent(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    container.put(FILES)
    file = tmp_path / "amlfs.yaml"
    file.write_text(declaration(container.url, "{fraction: 0.25, seed: 2}"))
    first = cli.ok("apply", str(file)).out
    for line in ("dataset weather: registered (weather:1)",
                 "dataset weather-small: registered (weather-small:1)",
                 "dataset weather-train: registered (weather-train:1)",
                 "dataset weather-test: registered (weather-test:1)",
                 "dataset weather-bins: registered (weather-bins:1)"):  # fmt: skip
        assert line in first
    assert shown(cli, "weather-small")["derived_from"] == {
        "parent": "weather:1", "operation": "sample", "parameters": {"fraction": 0.25, "seed": 2}
    }  # fmt: skip
    assert pins(cli, "weather-train") | pins(cli, "weather-test") == pins(cli, "weather")
    assert set(pins(cli, "weather-bins")) == {
        p.removeprefix("days/") for p, d in FILES.items() if p.endswith(".bin") and len(d) >= 1024
    }

    before = registry_dump(cli)
    assert "weather-small: unchanged (weather-small:1)" in cli.ok("apply", str(file)).out
    assert registry_dump(cli) == before

    file.write_text(declaration(container.url, "{fraction: 0.25, seed: 3}"))
    changed = cli.ok("apply", str(file)).out
    assert "weather-small: registered (weather-small:2)" in changed
    assert "weather-train: unchanged (weather-train:1)" in changed

    container.put({"days/later.csv": b"later\n"})
    cli.ok("dataset", "register", "weather", "--datastore", "blob", "--path", "days")
    grown = cli.ok("apply", str(file)).out
    assert "weather-small: registered (weather-small:3)" in grown
    assert shown(cli, "weather-small:3")["derived_from"]["parent"] == "weather:2"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("fraction: 0.25", "fraction: 1.5"), "less than 1"),
        (("sample: {", "sample: {part: first, "), "Extra inputs"),
        (('"**/*.bin"', '"a**"'), "bad glob"),
        (("1KiB", "lots"), "not a size"),
        (("2000-01-01", "someday"), "ISO 8601"),
        (("schema: amlfs/declaration/v2", "schema: amlfs/declaration/v1"), "needs schema"),
        (("dataset: weather, sample", "dataset: weather-bins, sample"), "declare 'weather-bins'"),
        (("dataset: weather, sample", "dataset: weather:7, sample"), "no version 7"),
    ],
)
def test_a_bad_subset_declaration_writes_nothing(
    cli: Cli, container: Container, tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    container.put(FILES)
    cli.ok("datastore", "list")  # creates the registry
    before = registry_dump(cli)
    file = tmp_path / "amlfs.yaml"
    file.write_text(declaration(container.url, "{fraction: 0.25, seed: 2}").replace(*edit))
    result = cli("apply", str(file))
    assert result.code == 2 and message in result.err, result.err
    assert registry_dump(cli) == before


def test_a_subset_mounts_and_verifies_through_its_parents_pins(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    cli.ok("dataset", "filter", "ds:1", "--include", "train", "--exclude", "**/*.txt",
           "--register", "train")  # fmt: skip
    root = mounts.mount("train:1", *OPTIONS)
    expected = {p for p in SAMPLE_FILES if p.startswith("train/") and not p.endswith(".txt")}
    found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert found == expected
    for path in expected:
        assert (root / path).read_bytes() == SAMPLE_FILES[path]
    mounts.unmount(root)

    assert cli.ok("dataset", "verify", "train").code == 0
    dataset.put({"train/b.bin": b"rewritten", "labels.csv": b"also rewritten"})
    result = cli("dataset", "verify", "train", "--json")
    report = json.loads(result.out)
    assert result.code == 1  # the pin is the parent's: the rewritten blob no longer matches
    assert [c["path"] for c in report["changed"]] == ["train/b.bin"]  # labels.csv is not in it
