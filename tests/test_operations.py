"""The filesystem's operations called directly, without a kernel mount.

A real registry holds a version (1,500 images in one folder, a few nested folders);
file data comes from an in-memory store through a real BlockReader. What a mount
promises: names resolve to stable inodes, everything is read-only with the pinned
sizes, xattrs tell where a file came from, reads return the pinned bytes, and every
failure reaches the kernel as an errno.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from amlfs import home
from amlfs.cache import BlockCache, HotBlocks
from amlfs.cache.readahead import FILES_AHEAD
from amlfs.errors import AmlfsError, SourceChanged
from amlfs.fuse.operations import (
    FOREVER_S,
    XATTRS,
    ReadOnlyOperations,
    fuse_error,
    require_read_with_inode,
)
from amlfs.reader import RUN_BLOCKS, BlockReader, ReadFailed
from amlfs.registry import Datastore, NewVersion, PinnedFile, Registry
from amlfs.registry import paths as registry_paths
from amlfs.registry.models import Entry
from amlfs.tree import ROOT_INODE, VersionTree, iso_to_ns
from tests.support.stores import ReadsInPieces
from tests.support.waiting import WAIT_S, eventually

BLOCK = 1024
ROOT = "datasets/pets"  # the version's folder in the datastore
IMAGES = 1500
MODIFIED = "2024-05-01T12:00:00+00:00"


def image(i: int) -> str:
    return f"images/img{i:05d}.jpg"


def content(path: str, size: int) -> bytes:
    return random.Random(path).randbytes(size)


FILES: dict[str, bytes] = {
    **{image(i): content(image(i), 100 + i % 900) for i in range(IMAGES)},  # one block each
    "labels/train/classes.txt": b"cat\ndog\n",
    "labels/val/classes.txt": b"cat\n",
    "labels/train/deep/er/notes.md": b"nested notes\n",
    "README.md": b"# pets\n",  # pinned without an md5
    "empty.bin": b"",
    "big.bin": content("big.bin", 10 * BLOCK + 7),
    "changed.bin": content("changed.bin", 3 * BLOCK),  # changed after registration
}
WITHOUT_MD5 = {"README.md"}
CHANGED = {"changed.bin"}


def etag(path: str) -> str:
    return f'"etag-{path}"'


def pinned_files() -> list[PinnedFile]:
    pinned = []
    for path, data in FILES.items():
        md5 = None if path in WITHOUT_MD5 else hashlib.md5(data).digest()
        modified = MODIFIED if path.startswith("labels/") else None
        pinned.append(PinnedFile(path, len(data), etag(path), md5, modified))
    return pinned


class FakeStore(ReadsInPieces):
    """The datastore's files in memory (paths relative to its root), with the contract of
    Store.read_pinned: a changed file raises SourceChanged. Records every request."""

    def __init__(self) -> None:
        self.files = {registry_paths.join(ROOT, path): data for path, data in FILES.items()}
        self.changed = {registry_paths.join(ROOT, path) for path in CHANGED}
        self.requests: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def read_pinned(self, relative: str, start: int, end: int, etag: str) -> bytes:
        with self._lock:
            self.requests.append((relative, start, end))
        if relative in self.changed:
            raise SourceChanged(f"{relative} changed since it was pinned")
        return self.files[relative][start:end]

    def requested(self) -> set[str]:
        with self._lock:
            return {registry_paths.relative_to(ROOT, r) for r, _, _ in self.requests}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(home.registry_path(tmp_path / "home"))
    reg.add_datastore(Datastore("blob", "az://box", "anonymous"))
    reg.register(NewVersion("pets", "blob", ROOT, [ROOT], pinned_files()))
    yield reg
    reg.close()


@pytest.fixture
def tree(registry: Registry) -> VersionTree:
    return VersionTree(registry, registry.get_version("pets", 1))


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


def source_url(tree: VersionTree) -> Callable[[str], str]:
    return lambda path: f"az://account@box/{tree.relative_path(path)}"


@pytest.fixture
async def ops(
    tree: VersionTree, store: FakeStore, tmp_path: Path
) -> AsyncIterator[ReadOnlyOperations]:
    cache = BlockCache(tmp_path / "blocks", 64 * 1024 * 1024)
    try:
        async with trio.open_nursery() as nursery:
            reader = BlockReader(
                store, cache, HotBlocks(64 * BLOCK), nursery, block_size=BLOCK,
                fetch_limit=4, io_timeout=5.0,
            )  # fmt: skip
            yield ReadOnlyOperations(tree, reader, source_url(tree))
            nursery.cancel_scope.cancel()
    finally:
        cache.close()


async def fails_with(code: int, request: Awaitable[Any]) -> None:
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await request
    assert raised.value.errno == code, f"{errno.errorcode[raised.value.errno]}, not {code}"


async def inode_of(ops: ReadOnlyOperations, path: str) -> int:
    """Resolve PATH one name at a time, as the kernel does."""
    inode = ROOT_INODE
    for name in path.split("/"):
        inode = (await ops.lookup(inode, name.encode(), None)).st_ino
    return inode


def entry_at(registry: Registry, tree: VersionTree, path: str) -> Entry:
    entry = tree.root
    for name in path.split("/"):
        found = registry.lookup(entry.id, name)
        assert found is not None, path
        entry = found
    return entry


# --- names and inodes -------------------------------------------------------------------


async def test_the_root_is_the_root_inode(ops: ReadOnlyOperations) -> None:
    attrs = await ops.getattr(ROOT_INODE, None)
    assert attrs.st_ino == ROOT_INODE
    assert stat.S_ISDIR(attrs.st_mode)


@pytest.mark.parametrize("path", ["images", image(0), image(1499), "labels/train/deep/er/notes.md"])
async def test_an_inode_is_the_entry_id_plus_one(
    ops: ReadOnlyOperations, registry: Registry, tree: VersionTree, path: str
) -> None:
    inode = await inode_of(ops, path)
    assert inode == entry_at(registry, tree, path).id + 1
    assert (await ops.getattr(inode, None)).st_ino == inode


async def test_inodes_are_the_same_on_every_mount_of_the_version(
    ops: ReadOnlyOperations, registry: Registry
) -> None:
    with Registry(registry.path) as elsewhere:
        again = VersionTree(elsewhere, elsewhere.resolve("pets:1"))
        other = ReadOnlyOperations(again, ops.reader, source_url(again))
        for path in ["images", image(7), "labels/val/classes.txt", "README.md"]:
            assert await inode_of(other, path) == await inode_of(ops, path)


async def test_unknown_names_are_enoent(ops: ReadOnlyOperations) -> None:
    images = await inode_of(ops, "images")
    await fails_with(errno.ENOENT, ops.lookup(ROOT_INODE, b"nope", None))
    await fails_with(errno.ENOENT, ops.lookup(images, b"img99999.jpg", None))
    await fails_with(errno.ENOENT, ops.lookup(ROOT_INODE, b"images/img00001.jpg", None))
    await fails_with(errno.ENOENT, ops.lookup(ROOT_INODE, b"IMAGES", None))  # case matters


async def test_a_name_that_is_not_utf8_is_enoent(ops: ReadOnlyOperations) -> None:
    # No pinned name can be one (the registry holds text), so it is simply not there.
    await fails_with(errno.ENOENT, ops.lookup(ROOT_INODE, b"caf\xe9.jpg", None))


async def test_unknown_inodes_are_enoent(ops: ReadOnlyOperations) -> None:
    await fails_with(errno.ENOENT, ops.getattr(10**9, None))
    await fails_with(errno.ENOENT, ops.lookup(10**9, b"images", None))
    await fails_with(errno.ENOENT, ops.readdir(0, 0, None, 10**9))
    await fails_with(errno.ENOENT, ops.read(0, 0, 4096, 10**9))
    await fails_with(errno.ENOENT, ops.getxattr(10**9, b"user.amlfs.etag", None))


async def test_an_inode_of_another_version_is_unknown(
    ops: ReadOnlyOperations, registry: Registry
) -> None:
    v2 = registry.register(NewVersion("pets", "blob", ROOT, [ROOT], pinned_files()[:3]))
    other = VersionTree(registry, v2)
    stale = other.inode_of(other.lookup(other.root, "images"))
    await fails_with(errno.ENOENT, ops.getattr(stale, None))


async def test_dot_is_the_folder_and_dotdot_its_parent(ops: ReadOnlyOperations) -> None:
    train = await inode_of(ops, "labels/train")
    labels = await inode_of(ops, "labels")
    assert (await ops.lookup(train, b".", None)).st_ino == train
    assert (await ops.lookup(train, b"..", None)).st_ino == labels
    assert (await ops.lookup(labels, b"..", None)).st_ino == ROOT_INODE
    assert (await ops.lookup(ROOT_INODE, b"..", None)).st_ino == ROOT_INODE


# --- attributes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [image(0), image(1234), "labels/train/classes.txt", "empty.bin", "big.bin"]
)
async def test_files_are_read_only_regular_files_of_the_pinned_size(
    ops: ReadOnlyOperations, path: str
) -> None:
    attrs = await ops.getattr(await inode_of(ops, path), None)
    assert stat.S_ISREG(attrs.st_mode)
    assert stat.S_IMODE(attrs.st_mode) == 0o444
    assert attrs.st_size == len(FILES[path])
    assert attrs.st_blocks * 512 >= attrs.st_size
    assert attrs.st_nlink == 1
    assert attrs.st_blksize == BLOCK
    assert (attrs.st_uid, attrs.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.parametrize("path", ["", "images", "labels", "labels/train/deep/er"])
async def test_folders_are_read_only_folders(ops: ReadOnlyOperations, path: str) -> None:
    inode = await inode_of(ops, path) if path else ROOT_INODE
    attrs = await ops.getattr(inode, None)
    assert stat.S_ISDIR(attrs.st_mode)
    assert stat.S_IMODE(attrs.st_mode) == 0o555
    assert attrs.st_mtime_ns == ops.tree.created_ns > 0


async def test_a_file_has_its_pinned_modification_time_or_the_versions(
    ops: ReadOnlyOperations,
) -> None:
    labelled = await ops.getattr(await inode_of(ops, "labels/val/classes.txt"), None)
    assert labelled.st_mtime_ns == iso_to_ns(MODIFIED)
    unlabelled = await ops.getattr(await inode_of(ops, "README.md"), None)
    assert unlabelled.st_mtime_ns == ops.tree.created_ns


async def test_entries_and_attributes_never_expire_from_the_kernel(
    ops: ReadOnlyOperations,
) -> None:
    attrs = await ops.lookup(ROOT_INODE, b"README.md", None)
    assert attrs.entry_timeout == attrs.attr_timeout == FOREVER_S


async def test_statfs_reports_the_versions_files_and_a_full_filesystem(
    ops: ReadOnlyOperations,
) -> None:
    data = await ops.statfs(None)
    assert data.f_files == len(FILES)
    assert data.f_blocks * data.f_frsize >= sum(len(d) for d in FILES.values())
    assert data.f_bfree == data.f_bavail == data.f_ffree == 0
    assert data.f_namemax == 255


# --- listings ---------------------------------------------------------------------------


def expected_names(folder: str) -> list[str]:
    prefix = f"{folder}/" if folder else ""
    return sorted({p[len(prefix) :].split("/")[0] for p in FILES if p.startswith(prefix)})


async def list_folder(ops: ReadOnlyOperations, inode: int, room: int) -> list[tuple[str, int]]:
    """List a folder as the kernel does: readdir calls into a buffer with ROOM for that
    many entries, each resuming after the last entry accepted, until one adds nothing."""
    accepted: list[tuple[bytes, Any, int]] = []

    def reply(token: object, name: bytes, attrs: Any, next_id: int) -> bool:
        if len(accepted) == room:
            return False  # the buffer is full
        accepted.append((name, attrs, next_id))
        return True

    listed: list[tuple[str, int]] = []
    start_id = 0
    original, pyfuse3.readdir_reply = pyfuse3.readdir_reply, reply
    try:
        for _ in range(len(FILES) + 2):  # bounded: one entry per call at the least
            accepted.clear()
            await ops.readdir(0, start_id, None, inode)  # as the kernel: handle 0, the inode
            if not accepted:
                return listed
            for name, attrs, next_id in accepted:
                assert next_id == attrs.st_ino  # the offset handed back names the entry
                listed.append((os.fsdecode(name), attrs.st_ino))
            start_id = accepted[-1][2]
    finally:
        pyfuse3.readdir_reply = original
    pytest.fail("the listing never ended")


@pytest.mark.parametrize("room", [1, 7, 255, 256, 257, 5000])
async def test_a_listing_has_every_entry_once_in_name_order_however_it_is_split(
    ops: ReadOnlyOperations, room: int
) -> None:
    listed = await list_folder(ops, await inode_of(ops, "images"), room)
    assert [name for name, _ in listed] == expected_names("images")
    assert len(listed) == IMAGES
    # The inodes listed are those lookups give.
    for name, inode in listed[:: IMAGES // 10]:
        assert await inode_of(ops, f"images/{name}") == inode


@pytest.mark.parametrize("folder", ["", "labels", "labels/train", "labels/train/deep/er"])
async def test_small_folders_list_their_files_and_subfolders(
    ops: ReadOnlyOperations, folder: str
) -> None:
    inode = await inode_of(ops, folder) if folder else ROOT_INODE
    assert [name for name, _ in await list_folder(ops, inode, 100)] == expected_names(folder)


async def test_the_tree_pages_through_a_folder_in_name_order(tree: VersionTree) -> None:
    images = tree.lookup(tree.root, "images")
    assert images is not None
    names: list[str] = []
    after = None
    for _ in range(IMAGES):  # bounded: at least one entry a page
        page = tree.children(images, after, 64)
        names += [entry.name for entry in page]
        if len(page) < 64:
            break
        after = page[-1]
    assert names == expected_names("images")


async def test_only_folders_can_be_listed(ops: ReadOnlyOperations) -> None:
    await fails_with(errno.ENOTDIR, ops.readdir(0, 0, None, await inode_of(ops, "README.md")))


async def test_opening_a_folder_is_left_to_the_kernel(ops: ReadOnlyOperations) -> None:
    # ENOSYS once: the kernel then opens folders itself and caches their listings.
    await fails_with(errno.ENOSYS, ops.opendir(await inode_of(ops, "images"), None))
    assert ReadOnlyOperations.readdir_with_inode


# --- extended attributes ----------------------------------------------------------------


async def test_xattrs_tell_the_source_etag_md5_and_version_of_a_file(
    ops: ReadOnlyOperations,
) -> None:
    path = image(42)
    inode = await inode_of(ops, path)
    assert await ops.listxattr(inode, None) == list(XATTRS)
    assert await ops.getxattr(inode, b"user.amlfs.source", None) == (
        f"az://account@box/{ROOT}/{path}".encode()
    )
    assert await ops.getxattr(inode, b"user.amlfs.etag", None) == etag(path).encode()
    assert await ops.getxattr(inode, b"user.amlfs.md5", None) == (
        hashlib.md5(FILES[path]).hexdigest().encode()
    )
    assert await ops.getxattr(inode, b"user.amlfs.version", None) == b"pets:1"


async def test_a_file_pinned_without_an_md5_has_no_md5_xattr(ops: ReadOnlyOperations) -> None:
    inode = await inode_of(ops, "README.md")
    await fails_with(errno.ENODATA, ops.getxattr(inode, b"user.amlfs.md5", None))
    assert await ops.getxattr(inode, b"user.amlfs.etag", None) == etag("README.md").encode()


async def test_unknown_xattrs_and_xattrs_of_folders_are_enodata(ops: ReadOnlyOperations) -> None:
    file, folder = await inode_of(ops, image(1)), await inode_of(ops, "images")
    await fails_with(errno.ENODATA, ops.getxattr(file, b"user.other", None))
    await fails_with(errno.ENODATA, ops.getxattr(file, b"security.selinux", None))
    await fails_with(errno.ENODATA, ops.getxattr(folder, b"user.amlfs.source", None))
    await fails_with(errno.ENODATA, ops.getxattr(ROOT_INODE, b"user.amlfs.version", None))
    assert await ops.listxattr(folder, None) == []


async def test_the_root_names_the_socket_that_takes_read_hints(ops: ReadOnlyOperations) -> None:
    assert await ops.listxattr(ROOT_INODE, None) == []  # until the mount takes hints
    await fails_with(errno.ENODATA, ops.getxattr(ROOT_INODE, b"user.amlfs.hints", None))
    ops.hint_socket = "/run/amlfs/1-2.hints"
    assert await ops.listxattr(ROOT_INODE, None) == [b"user.amlfs.hints"]
    assert await ops.getxattr(ROOT_INODE, b"user.amlfs.hints", None) == b"/run/amlfs/1-2.hints"
    folder = await inode_of(ops, "images")
    await fails_with(errno.ENODATA, ops.getxattr(folder, b"user.amlfs.hints", None))


# --- reading ----------------------------------------------------------------------------


async def read_whole(ops: ReadOnlyOperations, path: str, piece: int = 128 * 1024) -> bytes:
    """Read PATH as the kernel does once opens are its own: handle 0, and the inode."""
    inode = await inode_of(ops, path)
    parts = []
    for offset in range(0, len(FILES[path]) + 1, piece):  # bounded by the pinned size
        parts.append(await ops.read(0, offset, piece, inode))
    return b"".join(parts)


@pytest.mark.parametrize(
    ("path", "piece"),
    [(image(3), 4096), ("labels/train/deep/er/notes.md", 5), ("empty.bin", 4096),
     ("big.bin", 4096), ("big.bin", 1000), ("big.bin", 3 * BLOCK + 1)],
)  # fmt: skip
async def test_a_file_reads_as_its_pinned_bytes(
    ops: ReadOnlyOperations, path: str, piece: int
) -> None:
    assert await read_whole(ops, path, piece) == FILES[path]


@pytest.mark.parametrize(
    "flags", [os.O_RDONLY, os.O_WRONLY, os.O_RDWR], ids=["O_RDONLY", "O_WRONLY", "O_RDWR"]
)
async def test_opening_is_left_to_the_kernel(ops: ReadOnlyOperations, flags: int) -> None:
    # ENOSYS once: the kernel then opens files itself, keeps their pages across opens and
    # sends no release; the `ro` mount and the mode bits refuse writing.
    await fails_with(errno.ENOSYS, ops.open(await inode_of(ops, "README.md"), flags, None))
    assert ReadOnlyOperations.read_with_inode


async def test_reads_of_one_file_at_two_places_are_independent(ops: ReadOnlyOperations) -> None:
    inode = await inode_of(ops, "big.bin")
    assert await ops.read(0, BLOCK, 10, inode) == FILES["big.bin"][BLOCK : BLOCK + 10]
    assert await ops.read(0, 7 * BLOCK, 10, inode) == FILES["big.bin"][7 * BLOCK : 7 * BLOCK + 10]
    assert await ops.read(0, BLOCK + 10, 5, inode) == FILES["big.bin"][BLOCK + 10 : BLOCK + 15]


async def test_a_file_read_from_its_first_byte_is_reported_started_once(
    ops: ReadOnlyOperations,
) -> None:
    started: list[int] = []
    ops.on_start = started.append
    inode = await inode_of(ops, "big.bin")
    await ops.read(0, 0, BLOCK, inode)
    await ops.read(0, BLOCK, BLOCK, inode)
    assert started == [inode]


async def test_reading_a_folder_is_eisdir(ops: ReadOnlyOperations) -> None:
    await fails_with(errno.EISDIR, ops.read(0, 0, 4096, await inode_of(ops, "images")))


async def test_what_reads_remember_per_file_is_bounded(
    ops: ReadOnlyOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("amlfs.fuse.operations.FILES_KEPT", 10)
    for i in range(30):
        assert await read_whole(ops, image(i)) == FILES[image(i)]
    assert len(ops._files) == 10


WRITES: dict[str, Callable[[ReadOnlyOperations, int, int], Awaitable[Any]]] = {
    "setattr": lambda o, d, f: o.setattr(f, pyfuse3.EntryAttributes(), None, None, None),
    "mknod": lambda o, d, f: o.mknod(d, b"fifo", stat.S_IFIFO | 0o644, 0, None),
    "mkdir": lambda o, d, f: o.mkdir(d, b"new", 0o755, None),
    "unlink": lambda o, d, f: o.unlink(d, b"README.md", None),
    "rmdir": lambda o, d, f: o.rmdir(d, b"labels", None),
    "symlink": lambda o, d, f: o.symlink(d, b"link", b"README.md", None),
    "rename": lambda o, d, f: o.rename(d, b"README.md", d, b"README.txt", 0, None),
    "link": lambda o, d, f: o.link(f, d, b"hard", None),
    "create": lambda o, d, f: o.create(d, b"new.txt", 0o644, os.O_WRONLY | os.O_CREAT, None),
    "write": lambda o, d, f: o.write(1, 0, b"data"),
    "setxattr": lambda o, d, f: o.setxattr(f, b"user.note", b"x", None),
    "removexattr": lambda o, d, f: o.removexattr(f, b"user.amlfs.etag", None),
}


@pytest.mark.parametrize("handler", list(WRITES))
async def test_every_change_is_erofs(ops: ReadOnlyOperations, handler: str) -> None:
    file = await inode_of(ops, "README.md")
    await fails_with(errno.EROFS, WRITES[handler](ops, ROOT_INODE, file))
    assert await read_whole(ops, "README.md") == FILES["README.md"]


async def test_a_file_changed_in_storage_reads_as_eio(
    ops: ReadOnlyOperations, store: FakeStore
) -> None:
    inode = await inode_of(ops, "changed.bin")
    await fails_with(errno.EIO, ops.read(0, 0, 4096, inode))
    await fails_with(errno.EIO, ops.read(0, 2 * BLOCK, 4096, inode))
    # The rest of the version reads on.
    assert await read_whole(ops, "big.bin") == FILES["big.bin"]


def test_fuse_error_maps_failures_to_errnos() -> None:
    enoent = pyfuse3.FUSEError(errno.ENOENT)
    assert fuse_error(enoent) is enoent
    assert fuse_error(ReadFailed("no data within 30 s")).errno == errno.EIO
    assert fuse_error(RuntimeError("a bug")).errno == errno.EIO


# --- read-ahead through the operations --------------------------------------------------


async def test_walking_a_folder_in_order_fetches_the_next_files_ahead(
    ops: ReadOnlyOperations, store: FakeStore
) -> None:
    for i in range(2):  # each file started: its first bytes read
        await ops.read(0, 0, 16, await inode_of(ops, image(i)))
    walked = [image(i) for i in range(2 + FILES_AHEAD)]  # these two and the next eight
    await eventually(
        lambda: ops.reader.stats.prefetches == 0 and store.requested() == set(walked),
        "the next files fetched",
    )
    assert len(store.requests) == len(walked)
    for path in walked:  # read later, they come from memory: fetched once each
        assert await read_whole(ops, path) == FILES[path]
    fetched = Counter(registry_paths.relative_to(ROOT, r) for r, _, _ in store.requests)
    assert [fetched[path] for path in walked] == [1] * len(walked)


async def test_reading_one_small_file_fetches_only_it(
    ops: ReadOnlyOperations, store: FakeStore
) -> None:
    assert await ops.read(0, 0, 4096, await inode_of(ops, image(700))) == FILES[image(700)]
    await eventually(lambda: ops.reader.stats.prefetches == 0, "read-ahead done")
    assert store.requested() == {image(700)}
    assert len(store.requests) == 1


async def test_reading_a_large_file_straight_on_fetches_blocks_ahead(
    ops: ReadOnlyOperations, store: FakeStore
) -> None:
    inode = await inode_of(ops, "big.bin")
    assert store.requests == []  # looking a file up fetches nothing
    await ops.read(0, 0, BLOCK, inode)
    await eventually(lambda: ops.reader.stats.prefetches == 0, "prefetches done")
    covered = sorted(
        b for _, start, end in store.requests for b in range(start // BLOCK, -(-end // BLOCK))
    )
    assert covered == [0, 1, 2]  # the block read and the first window of two
    assert len(store.requests) == 2  # the window's two blocks in one request


async def test_read_ahead_goes_out_while_the_read_that_asked_for_it_waits(
    ops: ReadOnlyOperations, store: FakeStore
) -> None:
    release, first_done = threading.Event(), trio.Event()
    plain = store.read_pinned

    def first_block_held(relative: str, start: int, end: int, etag: str) -> bytes:
        if start == 0:
            release.wait(WAIT_S)
        return plain(relative, start, end, etag)

    store.read_pinned = first_block_held  # type: ignore[method-assign]
    inode = await inode_of(ops, "big.bin")

    async def first_read() -> None:
        await ops.read(0, 0, BLOCK // 4, inode)
        first_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first_read)
        await eventually(lambda: any(start == BLOCK for _, start, _ in store.requests),
                         "the read-ahead after the first block asked for")  # fmt: skip
        assert not first_done.is_set()
        release.set()
    assert first_done.is_set()


async def test_a_file_read_straight_through_is_fetched_in_whole_requests(
    ops: ReadOnlyOperations, store: FakeStore
) -> None:
    inode = await inode_of(ops, "big.bin")  # blocks 0..10
    for offset in range(0, len(FILES["big.bin"]), BLOCK // 4):  # as the kernel reads
        await ops.read(0, offset, BLOCK // 4, inode)
        await eventually(lambda: ops.reader.stats.prefetches == 0, "read-ahead done")
    blocks = [(start // BLOCK, -(-end // BLOCK)) for _, start, end in sorted(store.requests)]
    # The block read first, the first window of two, the window of eight once it opens
    # (in requests of at most RUN_BLOCKS), the rest of the file: every block once, and
    # never a request per block as the reader moves on.
    assert RUN_BLOCKS == 4
    assert blocks == [(0, 1), (1, 3), (3, 7), (7, 9), (9, 11)]


def test_a_pyfuse3_without_the_patch_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(pyfuse3.Operations, "read_with_inode")
    with pytest.raises(AmlfsError, match=r"inode-to-read-and-readdir\.patch"):
        require_read_with_inode()
