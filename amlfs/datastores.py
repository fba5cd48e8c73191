"""Building a Datastore record from what a user gives (CLI flags or a declaration)."""

from __future__ import annotations

from urllib.parse import urlsplit

from amlfs import storage
from amlfs.errors import UserError
from amlfs.registry import paths
from amlfs.registry.models import Datastore


def make_datastore(
    name: str,
    url: str,
    *,
    connection_string_env: str | None = None,
    account_key_env: str | None = None,
    sas_token_env: str | None = None,
    anonymous: bool = False,
    account_name: str | None = None,
) -> Datastore:
    """A validated Datastore; credentials are named by where they come from, never given."""
    paths.check_name("datastore", name)
    url = storage.check_url(url)
    chosen = {
        "connection-string-env": connection_string_env,
        "account-key-env": account_key_env,
        "sas-token-env": sas_token_env,
    }
    given = {kind: env for kind, env in chosen.items() if env}
    if len(given) + anonymous > 1:
        raise UserError("give at most one credential source (an --…-env option or --anonymous)")
    if given:
        credential, env = next(iter(given.items()))
    else:
        credential, env = ("anonymous" if anonymous else storage.default_credential(url)), None
    account_name = account_name or _account_from_url(url)
    ds = Datastore(name, url, credential, env, account_name)
    storage.check_credential(ds)
    if credential not in ("connection-string-env", "none") and not account_name:
        raise UserError(
            f"datastore {name!r}: {credential} credentials need the storage account: give "
            "--account-name or a URL like az://container@ACCOUNT.blob.core.windows.net/path"
        )
    return ds


def _account_from_url(url: str) -> str | None:
    """The account of `az://container@ACCOUNT.blob.core.windows.net/...` style URLs."""
    netloc = urlsplit(url).netloc
    if storage.protocol_of(url) in storage.AZURE_PROTOCOLS and "@" in netloc:
        return netloc.partition("@")[2].split(".")[0] or None
    return None
