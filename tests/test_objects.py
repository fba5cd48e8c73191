"""How each datastore credential becomes the configuration of the client that reads
pinned blobs (amlfs.objects); the reads themselves are tested on the emulator."""

from __future__ import annotations

import pytest

from amlfs.objects import Credential, client_config

KEY = "a2V5"


@pytest.mark.parametrize(
    ("connection_string", "expected"),
    [
        (
            f"DefaultEndpointsProtocol=http;AccountName=dev;AccountKey={KEY};"
            "BlobEndpoint=http://127.0.0.1:10000/dev;",
            {"account_name": "dev", "account_key": KEY, "endpoint": "http://127.0.0.1:10000/dev"},
        ),
        (
            f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};"
            "EndpointSuffix=core.chinacloudapi.cn",
            {"account_name": "acct", "account_key": KEY,
             "endpoint": "https://acct.blob.core.chinacloudapi.cn"},
        ),
        (
            "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=?sv=1&sig=s",
            {"account_name": "acct", "sas_key": "sv=1&sig=s",
             "endpoint": "https://acct.blob.core.windows.net"},
        ),
        (
            "UseDevelopmentStorage=true",
            {"account_name": "devstoreaccount1", "endpoint": "http://127.0.0.1:10000/devstoreaccount1"},
        ),
    ],
)  # fmt: skip
def test_a_connection_string_gives_the_account_its_secret_and_the_endpoint(
    connection_string: str, expected: dict
) -> None:
    config, extra = client_config(Credential("connection-string-env", None, connection_string))
    assert {k: v for k, v in config.items() if k in expected} == expected
    assert extra == {}


def test_a_key_or_a_sas_signs_for_the_named_account_in_azures_cloud() -> None:
    endpoint = "https://acct.blob.core.windows.net"
    key, _ = client_config(Credential("account-key-env", "acct", KEY))
    sas, _ = client_config(Credential("sas-token-env", "acct", "?sv=1&sig=s"))
    anonymous, _ = client_config(Credential("anonymous", "acct"))
    assert key == {"account_name": "acct", "endpoint": endpoint, "account_key": KEY}
    assert sas == {"account_name": "acct", "endpoint": endpoint, "sas_key": "sv=1&sig=s"}
    assert anonymous == {"account_name": "acct", "endpoint": endpoint, "skip_signature": True}


def test_the_default_credential_is_the_azure_sdks_chain() -> None:
    from azure.identity import DefaultAzureCredential

    config, extra = client_config(Credential("default", "acct"))
    assert config == {"account_name": "acct", "endpoint": "https://acct.blob.core.windows.net"}
    assert isinstance(extra["credential_provider"]._credential, DefaultAzureCredential)
