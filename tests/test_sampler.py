"""The read-hint client: `hint` sends one list on the wire the mount reads, and
`HintedSampler` yields its sampler's indices unchanged while the paths of the next ones
go ahead of them, a window at a time (pure, with a stand-in socket server; the real
mount is in test_mount_hints.py)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amlfs import sampler
from amlfs.errors import UserError
from amlfs.sampler import HintedSampler, hint


class Listener:
    """A Unix socket that records what each connection sends, in a thread of its own."""

    def __init__(self, address: str) -> None:
        self.address = address  # a path, or "@name" for an abstract one
        self.connections: list[bytes] = []
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind("\0" + address[1:] if address.startswith("@") else address)
        self._server.listen(4)
        self._server.settimeout(10)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:  # until the socket is closed
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                chunks = []
                while data := conn.recv(65536):
                    chunks.append(data)
                self.connections.append(b"".join(chunks))

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Until COUNT connections have ended (bounded in time)."""
        deadline = time.monotonic() + timeout
        while len(self.connections) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._server.close()
        self._thread.join(timeout=10)


@pytest.fixture(params=["file", "abstract"])
def listener(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Listener]:
    """A stand-in for a mount's hint socket, a file or an abstract name; the mountpoint
    "/mnt/data" names it."""
    name = f"hints-{os.getpid()}-{tmp_path.name[:40]}"
    server = Listener(f"/tmp/{name}.sock" if request.param == "file" else f"@{name}")
    monkeypatch.setattr(sampler, "hint_socket", lambda mountpoint: server.address)
    try:
        yield server
    finally:
        server.close()
        if request.param == "file":
            Path(server.address).unlink(missing_ok=True)


def received(listener: Listener, connections: int) -> list[list[str]]:
    listener.wait_for(connections)
    assert len(listener.connections) == connections
    return [data.decode().splitlines() for data in listener.connections]


def test_hint_sends_paths_one_a_line_in_utf8_relative_to_the_mount(listener: Listener) -> None:
    hint("/mnt/data", ["images/b.jpg", Path("/mnt/data/images/é a.jpg"), "c.bin"])
    hint("/mnt/data", ["second list"])
    assert received(listener, 2) == [["images/b.jpg", "images/é a.jpg", "c.bin"], ["second list"]]


class Recorder:
    """Stands in for a connection: what each send carried, and how many indices had been
    yielded by then."""

    def __init__(self, yielded: list[int]) -> None:
        self.yielded = yielded
        self.sends: list[tuple[int, list[str]]] = []
        self.closed = False

    def send(self, paths) -> None:
        self.sends.append((len(self.yielded), list(paths)))

    def close(self) -> None:
        self.closed = True


def test_the_sampler_sends_the_next_window_as_it_yields(monkeypatch: pytest.MonkeyPatch) -> None:
    order = list(range(100))
    random.Random(7).shuffle(order)
    yielded: list[int] = []
    recorder = Recorder(yielded)
    monkeypatch.setattr(sampler, "Hints", lambda mountpoint: recorder)
    wrapped = HintedSampler(order, lambda i: f"images/{i}.jpg", "/mnt/data", lookahead=16)
    for index in wrapped:
        yielded.append(index)
    assert yielded == order and len(wrapped) == 100
    sent = [path for _, paths in recorder.sends for path in paths]
    assert sent == [f"images/{i}.jpg" for i in order]  # each path once, in the sampler's order
    assert recorder.sends[0] == (0, [f"images/{i}.jpg" for i in order[:16]])
    for at, paths in recorder.sends:
        assert len(paths) <= 16
        # Before index AT is yielded, at least half a window past it is on its way.
        hinted = sum(len(p) for a, p in recorder.sends if a <= at)
        assert hinted >= min(100, at + 8)
    assert recorder.closed


def test_a_sample_of_several_files_sends_each_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder([])
    monkeypatch.setattr(sampler, "Hints", lambda mountpoint: recorder)
    batches = [[0, 1], [2, 3]]
    assert list(HintedSampler(batches, lambda b: [f"{i}.jpg" for i in b], "/mnt")) == batches
    assert recorder.sends == [(0, ["0.jpg", "1.jpg", "2.jpg", "3.jpg"])]


def test_each_pass_is_a_new_list_on_the_wire(listener: Listener) -> None:
    wrapped = HintedSampler([3, 1, 2], lambda i: f"f{i}", "/mnt/data", lookahead=2)
    assert list(wrapped) == [3, 1, 2]
    assert list(wrapped) == [3, 1, 2]
    assert received(listener, 2) == [["f3", "f1", "f2"], ["f3", "f1", "f2"]]


def test_without_a_mount_the_indices_still_come_unhinted(tmp_path: Path, caplog) -> None:
    wrapped = HintedSampler([2, 0, 1], lambda i: f"f{i}", tmp_path)
    assert list(wrapped) == [2, 0, 1]
    assert "sampling without read hints" in caplog.text
    with pytest.raises(UserError, match="takes no read hints"):
        hint(tmp_path, ["f0"])
