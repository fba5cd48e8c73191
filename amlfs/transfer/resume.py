"""Large downloads that resume mid-file.

A file of RESUMABLE_FROM bytes or more is fetched in one request into its partial file,
and each CHUNK written is noted in the journal with its SHA-256 (HOME/transfers.db,
`partials`). A run that stops half way (killed, interrupted, storage gone) leaves the
partial file and its notes; the next run into the same folder that fetches the same path
with the same etag and size takes the partial file over, reads it again, keeps the chunks
whose digests match from the first on (a chunk changed on disk, or lost by a power cut
before it reached the disk, ends the trusted part) and fetches only the rest. The whole
file is still checked against its pinned size and MD5 before it is placed.

A note is written after its chunk is written, never before, and needs no sync: what the
disk lost shows as a mismatch when the chunk is read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import threading
from pathlib import Path

from amlfs import locks
from amlfs.errors import AmlfsError, SourceChanged
from amlfs.registry import paths, pins
from amlfs.registry.models import PinnedFile
from amlfs.storage import Store
from amlfs.transfer.files import open_folder
from amlfs.transfer.journal import Journal, Partial

log = logging.getLogger(__name__)

CHUNK = 8 * 2**20  # bytes per digest: what a resumed download may fetch twice
RESUMABLE_FROM = 2 * CHUNK  # smaller files are fetched whole again
OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
PARTIAL_NAME = re.compile(r"\.amlfs-([0-9a-f]{12})-[0-9]+")


class Stopped(AmlfsError):
    """The download is being stopped (Ctrl-C): a large file ends where it is, kept."""


def resumable(f: PinnedFile) -> bool:
    """Whether F is fetched in checked chunks: large, and readable from an offset (a file
    pinned by content is read whole, and checked whole)."""
    return f.size >= RESUMABLE_FROM and pins.pinned_md5(f.etag) is None


def claim(journal: Journal, records: Path, dest: Path, top: int,
          fetch: list[PinnedFile]) -> dict[str, Partial]:  # fmt: skip
    """The partial files under DEST this run may resume, by path: those of a dead run
    for a file still to fetch, from the same etag and of the same size. Every other one
    of a dead run is removed with its notes; a live run's are left alone."""
    wanted = {f.path: f for f in fetch}
    found = {}
    for partial in journal.partials(dest):
        match = PARTIAL_NAME.fullmatch(partial.name)
        if match and locks.held(records / match.group(1)):
            continue  # its run is still writing it
        f = wanted.get(partial.path)
        if match and f and (f.etag, f.size, CHUNK) == (partial.etag, partial.size, partial.chunk):
            found[partial.path] = partial
            continue
        if match:
            _remove(top, partial)
        journal.forget_partial(dest, partial.path)
    return found


def kept_names(journal: Journal, dest: Path) -> set[tuple[str, str]]:
    """(folder, name) of the partial files under DEST that the journal notes: the ones a
    run may resume, which removing a dead run's leftovers must spare."""
    return {(paths.parent(p.path), p.name) for p in journal.partials(dest)}


class Resumable:
    """The partial file of one large file, and how much of it is known good."""

    def __init__(self, journal: Journal, dest: Path, partial: Partial):
        self.journal, self.dest, self.partial = journal, dest, partial
        self.digests = list(partial.digests)
        self.fetched = 0  # bytes received from storage by this run

    @property
    def good(self) -> int:
        return len(self.digests) * CHUNK

    @classmethod
    def fresh(cls, journal: Journal, dest: Path, f: PinnedFile, name: str) -> Resumable:
        """Notes for a new, empty partial file NAME of F."""
        partial = Partial(f.path, name, f.etag, f.size, CHUNK, [])
        journal.record_partial(dest, partial)
        return cls(journal, dest, partial)

    @classmethod
    def take_over(cls, journal: Journal, dest: Path, earlier: Partial, folder: int,
                  name: str) -> tuple[Resumable, int] | None:  # fmt: skip
        """EARLIER's partial file renamed NAME (this run's, removed if it dies) and open;
        its chunks read again, the good ones kept. None if it is gone or not a file."""
        try:
            os.rename(earlier.name, name, src_dir_fd=folder, dst_dir_fd=folder)
            fd = os.open(name, OPEN_FLAGS, dir_fd=folder)
        except OSError as error:
            log.info("%s: its partial file cannot be resumed (%s)", earlier.path, error)
            journal.forget_partial(dest, earlier.path)
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            journal.forget_partial(dest, earlier.path)
            return None
        good = _good_chunks(fd, earlier.digests)
        os.ftruncate(fd, len(good) * CHUNK)
        partial = Partial(earlier.path, name, earlier.etag, earlier.size, CHUNK, good)
        journal.record_partial(dest, partial)
        if len(good) < len(earlier.digests):
            log.warning("%s: chunk %d of its partial file differs from what was written;"
                        " fetching again from there", earlier.path, len(good))  # fmt: skip
        log.info("%s: resuming at byte %d of %d", earlier.path, len(good) * CHUNK, earlier.size)
        return cls(journal, dest, partial), fd

    def fetch(self, store: Store, relative: str, fd: int, stopping: threading.Event) -> None:
        """Write the rest of the file from storage into FD, noting each chunk written.
        Raises Stopped between pieces once STOPPING is set."""
        offset, size = self.good, self.partial.size
        if offset >= size:
            return
        digest, filled = hashlib.sha256(), 0
        for piece in store.stream_pinned(relative, self.partial.etag, offset):
            view = memoryview(piece).cast("B")
            while view:
                take = min(len(view), CHUNK - filled)
                _write_all(fd, view[:take], offset)
                digest.update(view[:take])
                offset, filled, view = offset + take, filled + take, view[take:]
                self.fetched += take
                if filled == CHUNK:
                    self.journal.record_chunk(self.dest, self.partial.path, len(self.digests),
                                              digest.digest())  # fmt: skip
                    self.digests.append(digest.digest())
                    digest, filled = hashlib.sha256(), 0
            if stopping.is_set():
                raise Stopped(f"{self.partial.path}: stopped at byte {offset} of {size}")

    def keep_after(self, error: BaseException) -> bool:
        """Whether the partial file is worth keeping after ERROR ended its fetch: it holds
        good chunks and the source did not change."""
        return bool(self.digests) and not isinstance(error, SourceChanged)


def _good_chunks(fd: int, digests: list[bytes]) -> list[bytes]:
    """DIGESTS up to the first chunk of FD that does not match (or is short)."""
    good = []
    for number, expected in enumerate(digests):
        data = os.pread(fd, CHUNK, number * CHUNK)
        if len(data) != CHUNK or hashlib.sha256(data).digest() != expected:
            break
        good.append(expected)
    return good


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _remove(top: int, partial: Partial) -> None:
    parent = paths.parent(partial.path)
    try:
        folder = open_folder(top, parent.split("/") if parent else [])
    except OSError:
        return  # nothing of ours can be there
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial.name, dir_fd=folder)
    finally:
        os.close(folder)
