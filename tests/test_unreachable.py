"""Which storage failures are an outage (the store cannot be reached at all) and which are
answers about a file: through the real clients (obstore, fsspec's http; the Azure SDK's
verdict is in test_storage_azurite.py), against loopback ports that refuse, never
accept, or serve the emulator."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from amlfs.datastores import make_datastore
from amlfs.errors import SourceChanged, StorageError, StorageUnreachable
from amlfs.registry.models import Datastore
from amlfs.storage import Store, unreachable
from tests.conftest import CONNECTION_ENV, Container
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, free_port


def azure_at(port: int, key: str = ACCOUNT_KEY) -> Store:
    """An Azure datastore whose blob service is 127.0.0.1:PORT."""
    secret = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )
    ds = make_datastore("down", "az://data", connection_string_env="DOWN")
    return Store(ds, env={"DOWN": secret}, reads_only=True)


@contextmanager
def loopback_listener(backlog: int) -> Iterator[socket.socket]:
    """A listening socket on a free loopback port that never accepts, closed after."""
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        yield listener
    finally:
        listener.close()


@pytest.fixture
def never_accepting() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose queue is full: a connect to
    it neither succeeds nor is refused, as to a host that drops packets."""
    fillers: list[socket.socket] = []
    with loopback_listener(0) as listener:
        port = listener.getsockname()[1]
        try:
            # The queue holds one connection; SYNs that come after it are dropped. A
            # filler's handshake may finish after connect_ex returns, so the queue is full
            # once a connect of our own times out.
            for _ in range(20):
                filler = socket.socket()
                filler.settimeout(0.5)
                try:
                    filler.connect(("127.0.0.1", port))
                except TimeoutError:
                    filler.close()
                    break
                fillers.append(filler)
            else:
                pytest.fail("the listener's queue never filled")
            yield port
        finally:
            for filler in fillers:
                filler.close()


@pytest.fixture
def never_answering() -> Iterator[int]:
    """A loopback port that takes connections (the kernel completes them) and never
    answers on them, as a service that hangs."""
    with loopback_listener(16) as listener:
        yield listener.getsockname()[1]


def test_a_read_from_a_closed_loopback_port_is_unreachable() -> None:
    store = azure_at(free_port())
    with pytest.raises(StorageUnreachable, match=r"cannot read a\.bin: connection refused"):
        store.read_pinned("a.bin", 0, 10, '"0x1"')
    with pytest.raises(StorageUnreachable, match=r"cannot reach a\.bin: connection refused"):
        store.probe("a.bin")


def test_an_fsspec_http_store_at_a_closed_loopback_port_is_unreachable() -> None:
    store = Store(Datastore("web", f"http://127.0.0.1:{free_port()}/data", "none"))
    with pytest.raises(StorageUnreachable, match=r"cannot read a\.bin: connection refused"):
        store.read_pinned("a.bin", 0, 10, "etag")


def test_a_connect_that_times_out_is_unreachable_and_the_probe_says_so_within_seconds(
    never_accepting: int,
) -> None:
    store = azure_at(never_accepting)
    started = time.monotonic()
    with pytest.raises(StorageUnreachable, match="connect timed out"):
        store.probe("a.bin")
    took = time.monotonic() - started
    assert took < 10, f"the probe took {took:.1f} s"  # its connect timeout is 2 s, no retry


def test_a_store_that_takes_connections_and_never_answers_is_unreachable_to_the_probe(
    never_answering: int,
) -> None:
    store = azure_at(never_answering)
    started = time.monotonic()
    with pytest.raises(StorageUnreachable, match="no answer within 5 s"):
        store.probe("a.bin")
    took = time.monotonic() - started
    assert took < 10, f"the probe took {took:.1f} s"  # its whole request is given 5 s


def test_a_store_that_answers_is_reachable_whatever_it_answers(
    container: Container, azurite: Azurite
) -> None:
    container.put({"a.bin": b"0123456789"})
    ds = make_datastore("blob", container.url, connection_string_env=CONNECTION_ENV)
    store = Store(ds, reads_only=True)
    store.probe("a.bin")
    store.probe("no such file")  # gone is an answer too
    with pytest.raises(SourceChanged) as changed:  # a changed source is about one file
        store.read_pinned("a.bin", 0, 10, '"0x8D0000000000000"')
    assert not isinstance(changed.value, StorageError)
    wrong_key = azure_at(azurite.port, key="d3Jvbmc=")
    with pytest.raises(StorageError) as denied:  # access denied: not an outage either
        wrong_key.read_pinned("a.bin", 0, 10, '"0x1"')
    assert not isinstance(denied.value, StorageUnreachable)
    wrong_key.probe("a.bin")


def refused() -> OSError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


def wrapped(cause: BaseException) -> RuntimeError:
    try:
        raise cause
    except BaseException as inner:
        try:
            raise RuntimeError("the client's own error") from inner
        except RuntimeError as outer:
            return outer


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (refused(), "connection refused"),
        (wrapped(refused()), "connection refused"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "name not resolved"),
        (OSError(errno.ENOTCONN, "not connected"), "transport endpoint is not connected"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "no route to host"),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), "connection timed out"),
        (TimeoutError("timed out"), None),  # a read that took too long: the store was there
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), None),
        (PermissionError(errno.EACCES, "Permission denied"), None),
        (FileNotFoundError(errno.ENOENT, "No such file"), None),
        (wrapped(ValueError("bad answer")), None),
    ],
)
def test_connection_failures_are_told_from_answers_whatever_wraps_them(
    error: BaseException, reason: str | None
) -> None:
    assert unreachable(error) == reason
