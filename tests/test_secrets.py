"""Secrets stay in the environment: never in the registry, exports, JSON, logs or errors."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, free_port

SAS = "sv=2024-01-01&ss=b&srt=sco&sp=rl&sig=SuperSecretSignature%2Fvalue%3D"


def leaked(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


def test_no_command_reveals_a_secret(cli: Cli, container: Container, tmp_path: Path) -> None:
    container.put({"d/a.txt": b"a", "d/b.txt": b"b"})
    down = f"BlobEndpoint=http://127.0.0.1:{free_port()}/{ACCOUNT};SharedAccessSignature={SAS}"
    env = {**os.environ, CONNECTION_ENV: os.environ[CONNECTION_ENV], "DOWN_CONN": down}
    secrets = [os.environ[CONNECTION_ENV], ACCOUNT_KEY, down, SAS, "SuperSecretSignature"]
    manifest = tmp_path / "m.yaml"
    commands = [
        ["datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV],
        ["datastore", "add", "down", "az://c", "--connection-string-env", "DOWN_CONN"],
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
    ]
    output = ""
    for args in commands:
        result = cli.process("--debug", *args, env=env)
        output += result.out + result.err
    assert "cannot list x" in output  # the failing command did report its failure
    assert leaked(output, secrets) == []
    assert leaked(manifest.read_text(), secrets) == []
    for path in cli.home.iterdir():  # the registry, its WAL and anything else kept there
        assert leaked(path.read_bytes().decode("latin-1"), secrets) == [], path
