"""The mount daemon's end of read hints: a Unix socket that takes the paths a reader
reads next, and a task that fetches those files ahead in that order (docs/hints.md).

A read-only mount cannot carry hints itself (the kernel refuses writes and setxattr
on it before they reach us), hence a socket beside the mount's record, which only the
mount's user (and root) may use: its folder is private, and each peer's uid is checked
(the only check when the socket is an abstract name, for a state folder whose path is
too long for a socket's). The mount's root names it in its `user.amlfs.hints` attribute.

Each connection starts a new list: the paths it sends, one a line, are appended to it
in order. The policy (bounds, passing) is amlfs.hints; the blocks are fetched by the
block reader's own read-ahead (`BlockReader.prefetch`), so the disk cache, single
flight and the pinned etag's conditional reads apply as to any read.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import trio

from amlfs.hints import Hint, HintQueue
from amlfs.reader import BlockReader, PinnedBlob
from amlfs.registry.models import Entry
from amlfs.tree import VersionTree

log = logging.getLogger(__name__)

FIRST_BLOCKS = 4  # a hinted file is fetched whole up to this many blocks, else its start
MAX_LINE = 4096  # bytes of one path (PATH_MAX); a longer line is ignored
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the final NUL
IGNORED_LOGGED = 10  # ignored hints logged per list; the rest are only counted
RETRY_S = 0.05  # read-ahead was full: look again this soon, or when a hinted fetch ends
BACKLOG = 16


def socket_address(near: Path) -> str:
    """Where the hint socket goes: beside NEAR (the mount's record, in a private folder)
    if that path fits in a socket address; else a name of Linux's abstract namespace,
    written with a leading "@" as ss(8) does, which leaves no file behind."""
    path = near.with_suffix(".hints")
    if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
        return str(path)
    return f"@amlfs-hints-{near.stem}"  # the record's stem: pid and start time


def bindable(address: str) -> str:
    """ADDRESS as socket calls take it: an abstract name starts with a NUL."""
    return "\0" + address[1:] if address.startswith("@") else address


def resolve(tree: VersionTree, path: str) -> Entry | None:
    """The file of the version at PATH (relative to the mount's root), or None."""
    parts = path.strip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    entry = tree.root
    for name in parts:
        if not entry.is_dir:
            return None
        found = tree.lookup(entry, name)
        if found is None:
            return None
        entry = found
    return None if entry.is_dir else entry


def peer_uid(stream: trio.SocketStream) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)[1]


class HintServer:
    """Takes hints on a socket and fetches the hinted files ahead of the reader."""

    def __init__(self, tree: VersionTree, reader: BlockReader,
                 blob_of: Callable[[Entry], PinnedBlob], near: Path) -> None:  # fmt: skip
        self.tree = tree
        self.reader = reader
        self.blob_of = blob_of
        self.address = socket_address(near)
        self.queue = HintQueue()
        self._changed = trio.Event()  # set (and replaced) when the queue may have work
        self._list = 0  # the current list: lines of older connections are dropped
        self._ignored_logged = 0

    @property
    def stats(self) -> dict:
        return self.queue.stats.public()

    def on_start(self, inode: int) -> None:
        """The reader started the file INODE (read it at offset 0)."""
        if self.queue.started(inode):
            self._change()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and fetch ahead until cancelled; a socket file is removed on the way
        out. A socket that cannot be made costs the hints only. Started (TASK_STATUS)
        once it listens, or has given up: a mount reports ready after that, so the
        socket its root names is there from the first request."""
        listening = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = None if self.address.startswith("@") else Path(self.address)
        try:
            try:
                if path is not None:
                    path.unlink(missing_ok=True)
                await listening.bind(bindable(self.address))
                if path is not None:
                    os.chmod(path, 0o600)
                listening.listen(BACKLOG)
            except OSError as error:
                log.error("read hints unavailable: cannot listen on %s: %s", self.address, error)
                task_status.started()
                return
            log.info("taking read hints on %s", self.address)
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fetch_ahead, nursery)
                await trio.serve_listeners(self._serve, [trio.SocketListener(listening)])
        finally:
            listening.close()
            if path is not None:
                path.unlink(missing_ok=True)

    # --- taking hints ---------------------------------------------------------------

    async def _serve(self, stream: trio.SocketStream) -> None:
        """One connection: a new list, its lines appended as they come. Whatever goes
        wrong here ends this connection only, never the mount."""
        try:
            async with stream:
                uid = peer_uid(stream)
                if uid not in (os.getuid(), 0):
                    log.warning("read hints refused: uid %d is not this mount's user", uid)
                    return
                await self._take_list(stream)
        except (trio.BrokenResourceError, OSError) as error:
            log.info("a read hint connection ended: %s", error)
        except Exception:
            log.exception("unexpected error taking read hints")

    async def _take_list(self, stream: trio.SocketStream) -> None:
        self._list += 1
        mine = self._list
        self.queue.replace()
        self._ignored_logged = 0
        self._change()
        buffer, skipping = b"", False  # skipping: the rest of a line too long to be a path
        while True:  # bounded by the peer: it ends when the connection does
            data = await stream.receive_some(65536)
            if not data:
                if buffer and not skipping:
                    self._take(mine, buffer)  # a last line without its newline
                return
            *lines, buffer = (buffer + data).split(b"\n")
            for line in lines:
                if skipping:
                    skipping = False
                    continue
                self._take(mine, line)
            if len(buffer) > MAX_LINE:  # too long to be a path: ignored, not kept
                if not skipping:
                    self.queue.stats.hints_received += 1
                    self._ignore(buffer[:64] + b"...")
                buffer, skipping = b"", True

    def _take(self, mine: int, line: bytes) -> None:
        """One line of list MINE (a path may begin or end with spaces: only a CR of a
        CRLF line end is taken off)."""
        line = line.removesuffix(b"\r")
        if not line:
            return
        self.queue.stats.hints_received += 1
        if mine != self._list:  # a newer connection replaced this list
            self.queue.stats.hints_dropped += 1
            return
        try:
            path = line.decode("utf-8")
        except UnicodeDecodeError:
            path = None
        entry = resolve(self.tree, path) if path else None
        if entry is None:
            self._ignore(line)
            return
        blob = self.blob_of(entry)
        blocks = range(min(FIRST_BLOCKS, -(-entry.size // self.reader.block_size)))
        size = min(entry.size, len(blocks) * self.reader.block_size)
        if self.queue.add(Hint(self.tree.inode_of(entry), size, (blob, blocks))):
            self._change()

    def _ignore(self, line: bytes) -> None:
        self.queue.stats.hints_ignored += 1
        if self._ignored_logged < IGNORED_LOGGED:
            self._ignored_logged += 1
            more = " (later ones of this list only counted)" if (
                self._ignored_logged == IGNORED_LOGGED) else ""  # fmt: skip
            log.warning("read hint ignored: %r is not a file of %s%s",
                        line.decode(errors="replace"), self.tree.version.ref, more)  # fmt: skip

    # --- fetching ahead ---------------------------------------------------------------

    def _change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _fetch_ahead(self, nursery: trio.Nursery) -> None:
        while True:  # for the life of the mount
            # No await between the queue's answer and waiting for a change: a change
            # made meanwhile sets the very event waited for.
            hint = self.queue.next_to_fetch()
            if hint is None:
                await self._changed.wait()
                continue
            blob, blocks = hint.what
            self.reader.prefetch(blob, blocks)
            events = self.reader.landing(blob, blocks)
            if events is None:  # read-ahead is full: this hint waits its turn again
                self.queue.refused(hint)
                with trio.move_on_after(RETRY_S):
                    await self._changed.wait()
                continue
            log.debug("fetching ahead (hinted): %s", blob.label)
            nursery.start_soon(self._land, hint, events)

    async def _land(self, hint: Hint, events: list[trio.Event]) -> None:
        for event in events:  # each fetch ends within the reader's time bound
            await event.wait()
        self.queue.landed(hint)
        self._change()
