"""Azure through obstore (Rust's object_store): reads of pinned blobs (the data path), and
the small documents of the team catalog.

A ranged read through the Azure SDK costs about 2 ms of CPU under the GIL and its
import half a second; obstore's costs a fraction of that, and its calls release the GIL.
Listing for registration, and the uploads of data, stay with adlfs (`amlfs.storage`).
Every read of a pinned blob is conditional on its etag (If-Match): a changed blob fails
the request itself and raises SourceChanged. A document is written only where nothing is
(If-None-Match: *) or only over the etag it was read at (If-Match).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from obstore.exceptions import (
    AlreadyExistsError,
    GenericError,
    NotFoundError,
    PreconditionError,
)
from obstore.store import AzureStore

from amlfs.errors import NameTaken, NotAsStored, SourceChanged, StorageError

if TYPE_CHECKING:
    from obstore.store import AzureConfig
    from typing_extensions import Buffer

# As the SDK's settings in amlfs.storage: an unreachable store fails in seconds (three
# retries, 0.5 s doubling), a stalled transfer after a minute without a byte.
CLIENT_OPTIONS = {
    "connect_timeout": timedelta(seconds=10),
    "read_timeout": timedelta(seconds=60),
    "timeout": timedelta(hours=24),  # a whole download is one request
}
RETRY = {
    "max_retries": 3,
    "retry_timeout": timedelta(seconds=20),
    "backoff": {"init_backoff": timedelta(seconds=0.5), "max_backoff": timedelta(seconds=4),
                "base": 2},
}  # fmt: skip
# A probe asks whether the store can be reached at all: one try, answered in seconds.
PROBE_OPTIONS = {"connect_timeout": timedelta(seconds=2), "timeout": timedelta(seconds=5)}
PROBE_RETRY = {"max_retries": 0, "retry_timeout": timedelta(seconds=5)}
PROBE_TIMED_OUT = "kind: Timeout,"  # object_store's kind of a request given up on time
DOWNLOAD_CHUNK = 8 * 2**20
# Pieces of a ranged read are filled from chunks of about this size: small enough to come
# from memory malloc reuses, large enough that a 4 MiB piece takes few turns of Python.
PIECE_CHUNK = 256 * 1024
# The emulator's published development account (UseDevelopmentStorage=true).
DEVELOPMENT_ACCOUNT = "devstoreaccount1"
DEVELOPMENT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


# obstore's requests run on a runtime of threads that starts with the first request and
# does not survive a fork: in a child forked after it started (a data loader's worker
# reading amlfs://), a request would wait for ever. The process it started in:
_runtime_pid: int | None = None


@dataclass(frozen=True)
class Credential:
    """How a datastore signs its requests: one of the kinds a datastore records."""

    kind: str  # connection-string-env, account-key-env, sas-token-env, anonymous, default
    account: str | None  # the datastore's account name, if it has one
    secret: str | None = None  # the value of the datastore's variable


def blob_endpoint(account: str) -> str:
    """The blob service of ACCOUNT in Azure's public cloud."""
    return f"https://{account}.blob.core.windows.net"


def parse_connection_string(text: str) -> dict[str, str]:
    """An Azure Storage connection string as {lower-case key: value}."""
    parts = (part.partition("=") for part in text.split(";") if part.strip())
    return {key.strip().lower(): value.strip() for key, _, value in parts}


def client_config(credential: Credential) -> tuple[AzureConfig, dict]:
    """obstore's AzureConfig and extra AzureStore arguments for CREDENTIAL."""
    if credential.kind == "connection-string-env":
        return _from_connection_string(parse_connection_string(credential.secret or ""))
    if not credential.account:
        raise ValueError(f"{credential.kind} credentials need the storage account name")
    config: AzureConfig = {"account_name": credential.account,
                           "endpoint": blob_endpoint(credential.account)}  # fmt: skip
    if credential.kind == "account-key-env":
        return {**config, "account_key": credential.secret or ""}, {}
    if credential.kind == "sas-token-env":
        return {**config, "sas_key": (credential.secret or "").lstrip("?")}, {}
    if credential.kind == "anonymous":
        return {**config, "skip_signature": True}, {}
    # The Azure SDK's default chain (environment, workload and managed identity, CLI…),
    # as adlfs uses it for listing.
    from azure.identity import DefaultAzureCredential
    from obstore.auth.azure import AzureCredentialProvider

    return config, {"credential_provider": AzureCredentialProvider(DefaultAzureCredential())}


def _from_connection_string(parts: Mapping[str, str]) -> tuple[AzureConfig, dict]:
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        account, endpoint = DEVELOPMENT_ACCOUNT, f"http://127.0.0.1:10000/{DEVELOPMENT_ACCOUNT}"
        return {"account_name": account, "account_key": DEVELOPMENT_KEY, "endpoint": endpoint}, {}
    account = parts.get("accountname")
    endpoint = parts.get("blobendpoint")
    if endpoint is None:
        if not account:
            raise ValueError("the connection string names neither AccountName nor BlobEndpoint")
        scheme = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")
        endpoint = f"{scheme}://{account}.blob.{suffix}"
    config: AzureConfig = {"endpoint": endpoint.rstrip("/")}
    if account:
        config["account_name"] = account
    if parts.get("accountkey"):
        config["account_key"] = parts["accountkey"]
    elif parts.get("sharedaccesssignature"):
        config["sas_key"] = parts["sharedaccesssignature"].lstrip("?")
    else:
        config["skip_signature"] = True
    if "account_name" not in config:
        # A SAS-only connection string may give just the endpoint; signing needs no name,
        # but obstore wants one: the endpoint's first label is the account.
        host = endpoint.partition("://")[2].split("/")[0]
        config["account_name"] = host.split(".")[0]
    return config, {}


def azure_store(container: str, credential: Credential, options: Mapping[str, object],
                retry: Mapping[str, object]) -> AzureStore:  # fmt: skip
    """obstore's client of CONTAINER with CREDENTIAL, these client OPTIONS and RETRY
    settings (plain HTTP allowed for an http:// endpoint: the emulator)."""
    config, extra = client_config(credential)
    plain = {"allow_http": config["endpoint"].startswith("http://")}
    return AzureStore(container, config=config, client_options={**options, **plain},
                      retry_config=retry, **extra)  # fmt: skip


class BlobReads:
    """Conditional reads of the blobs of one container."""

    def __init__(self, container: str, credential: Credential):
        self._store = azure_store(container, credential, CLIENT_OPTIONS, RETRY)
        self._probes = azure_store(container, credential, PROBE_OPTIONS, PROBE_RETRY)

    @property
    def usable(self) -> bool:
        """Whether requests can be made here: this process started obstore's runtime, or
        no process did yet (else the caller reads through another client)."""
        return _runtime_pid is None or _runtime_pid == os.getpid()

    def read(self, blob: str, start: int, end: int, etag: str) -> Buffer:
        """Bytes [start, end) of BLOB, only if it still has ETAG (else SourceChanged), in
        the client's own buffer: the caller copies out what it keeps, once."""
        _starting_runtime()
        with _changes_raised(blob):
            result = self._store.get(blob, options={"range": (start, end), "if_match": etag})
            return result.bytes()

    def read_pieces(self, blob: str, start: int, lengths: list[int], etag: str
                    ) -> Iterator[bytes]:  # fmt: skip
        """Consecutive pieces of BLOB from START, of these LENGTHS, in one request, only
        if it still has ETAG (else SourceChanged): each piece as soon as its bytes are in,
        joined once out of the answer's chunks. (`read` would gather the whole answer into
        one new buffer first: for a large range, a second copy into memory the kernel
        must map afresh.)"""
        _starting_runtime()
        total = sum(lengths)
        with _changes_raised(blob):
            result = self._store.get(
                blob, options={"range": (start, start + total), "if_match": etag}
            )
            chunks = iter(result.stream(min_chunk_size=PIECE_CHUNK))
            left = memoryview(b"")  # of the last chunk, past the pieces handed out
            for length in lengths:
                parts, needed = [], length
                while needed:  # bounded: each turn takes a chunk's bytes, or raises
                    if not left:
                        chunk = next(chunks, None)
                        if chunk is None:
                            raise StorageError(f"{blob}: the answer ended before {total} bytes")
                        left = memoryview(chunk)
                    parts.append(left[:needed])
                    needed -= len(parts[-1])
                    left = left[len(parts[-1]) :]
                yield b"".join(parts)  # one copy, into memory nothing filled first

    def probe(self, blob: str) -> None:
        """One HEAD request for BLOB, not retried. Returns if the service answered that the
        blob is there or not; raises what the client raised otherwise, and a TimeoutError
        (ETIMEDOUT: the store is unreachable) if nothing answered in time, connected or
        not: a service that takes connections and never answers is not back."""
        _starting_runtime()
        try:
            with contextlib.suppress(NotFoundError):
                self._probes.head(blob)
        except GenericError as error:
            text = str(error)
            if PROBE_TIMED_OUT not in text or "ConnectError(" in text:
                raise  # not a timeout, or a connect that timed out: an outage already
            limit = PROBE_OPTIONS["timeout"].total_seconds()
            raise TimeoutError(errno.ETIMEDOUT, f"no answer within {limit:g} s") from error

    def stream(self, blob: str, etag: str, start: int) -> Iterator[Buffer]:
        """BLOB's bytes from START to its end in pieces of at least DOWNLOAD_CHUNK, in one
        request, only if it still has ETAG (else SourceChanged)."""
        ranged: dict = {"range": {"offset": start}} if start else {}
        with _changes_raised(blob):
            result = self._store.get(blob, options={"if_match": etag, **ranged})
            yield from result.stream(min_chunk_size=DOWNLOAD_CHUNK)

    def download(self, blob: str, etag: str, local: Path) -> None:
        """The whole of BLOB to LOCAL, only if it still has ETAG (else SourceChanged)."""
        _starting_runtime()
        with _changes_raised(blob), open(local, "wb") as out:
            result = self._store.get(blob, options={"if_match": etag})
            for chunk in result.stream(min_chunk_size=DOWNLOAD_CHUNK):
                out.write(chunk)


class BlobDocuments:
    """Whole small blobs of one container (the team catalog's documents), created only
    where nothing is and replaced only over a known etag. Etags are given as the
    service sends them in headers, quoted, whether they come from a listing or not."""

    def __init__(self, container: str, credential: Credential):
        self._store = azure_store(container, credential, CLIENT_OPTIONS, RETRY)

    def create(self, blob: str, data: bytes) -> str:
        _starting_runtime()
        try:
            result = self._store.put(blob, data, mode="create", use_multipart=False)
        except (AlreadyExistsError, PreconditionError):
            raise NameTaken(f"{blob} exists already") from None
        return _quoted(result["e_tag"])

    def replace(self, blob: str, data: bytes, etag: str) -> str:
        _starting_runtime()
        try:
            result = self._store.put(blob, data, mode={"e_tag": etag}, use_multipart=False)
        except (PreconditionError, NotFoundError, FileNotFoundError):
            raise NotAsStored(f"{blob} changed since it was read") from None
        return _quoted(result["e_tag"])

    def fetch(self, blob: str) -> tuple[bytes, str] | None:
        _starting_runtime()
        try:
            result = self._store.get(blob)
            return bytes(result.bytes()), _quoted(result.meta["e_tag"])
        except (NotFoundError, FileNotFoundError):  # obstore's get raises the latter
            return None

    def fetch_many(self, blobs: list[str], workers: int) -> list[tuple[bytes, str] | None]:
        """fetch() of each of BLOBS, WORKERS at a time (obstore's calls release the GIL)."""
        _starting_runtime()
        with ThreadPoolExecutor(max(1, min(workers, len(blobs)))) as pool:
            return list(pool.map(self.fetch, blobs))

    def list_etags(self, prefix: str) -> dict[str, str]:
        """Every blob whose name starts with PREFIX (a folder, ending in '/'), as its name
        after PREFIX -> its etag."""
        _starting_runtime()
        return {meta["path"][len(prefix):]: _quoted(meta["e_tag"])
                for page in self._store.list(prefix or None, chunk_size=1000)
                for meta in page}  # fmt: skip


def _quoted(etag: str | None) -> str:
    return f'"{(etag or "").strip(chr(34))}"'


def _starting_runtime() -> None:
    global _runtime_pid
    if _runtime_pid is None:
        _runtime_pid = os.getpid()


@contextlib.contextmanager
def _changes_raised(blob: str) -> Iterator[None]:
    try:
        yield
    except PreconditionError:
        raise SourceChanged(f"{blob} changed since it was pinned") from None
    except NotFoundError:
        raise SourceChanged(f"{blob} is gone from the datastore") from None
