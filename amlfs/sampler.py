"""Telling a mount which files are read next, so that it fetches them ahead in that order.

A training loop's sampler knows its shuffled order; wrapped in `HintedSampler`, it sends
the paths of the next LOOKAHEAD samples to the mount as it yields their indices. `hint`
sends one list. Neither imports torch: any iterable of indices will do. The protocol is
in docs/hints.md.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from itertools import islice
from pathlib import Path
from typing import Any

from amlfs.errors import UserError

log = logging.getLogger(__name__)

HINTS_XATTR = "user.amlfs.hints"  # on a mount's root: the socket that takes hints
LOOKAHEAD = 256  # samples whose paths are sent ahead of the one yielded


def hint_socket(mountpoint: str | os.PathLike) -> str:
    """The address of the socket that takes MOUNTPOINT's hints: a path, or a name in
    Linux's abstract namespace written with a leading "@"."""
    try:
        return os.getxattr(mountpoint, HINTS_XATTR).decode()
    except OSError as error:
        raise UserError(f"{mountpoint} takes no read hints (not a read-only amlfs mount: "
                        f"{error.strerror})") from None  # fmt: skip


class Hints:
    """One list of hints: opening it replaces the mount's previous list; paths sent are
    appended to it, in order. Paths are relative to the mount's root (absolute ones
    under the mountpoint are made so)."""

    def __init__(self, mountpoint: str | os.PathLike) -> None:
        self.mountpoint = Path(mountpoint)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            address = hint_socket(mountpoint)
            self._socket.connect("\0" + address[1:] if address.startswith("@") else address)
        except OSError as error:
            self._socket.close()
            raise UserError(f"{mountpoint}: cannot send read hints: {error.strerror}") from None

    def send(self, paths: Iterable[str | os.PathLike]) -> None:
        lines = b"".join(os.fsencode(self._relative(path)) + b"\n" for path in paths)
        if lines:
            self._socket.sendall(lines)

    def _relative(self, path: str | os.PathLike) -> str:
        path = Path(path)
        if path.is_absolute():
            try:
                return str(path.relative_to(self.mountpoint))
            except ValueError:
                pass  # not under the mount: the mount ignores it and counts it
        return str(path)

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Hints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hint(mountpoint: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> None:
    """Replace MOUNTPOINT's list of files read next with PATHS, in the order given (the
    mount keeps the first few thousand; see docs/hints.md)."""
    with Hints(mountpoint) as hints:
        hints.send(paths)


class HintedSampler:
    """SAMPLER's indices, unchanged, while the paths of the next LOOKAHEAD of them are
    sent to the mount at MOUNTPOINT: each pass over it (an epoch) is a new list.
    PATHS_OF maps an index (whatever SAMPLER yields: a batch sampler's lists too) to the
    path, or paths, it reads. If the mount cannot take hints, the indices still come,
    unhinted, and the reason is logged once."""

    def __init__(self, sampler: Iterable[Any], paths_of: Callable[[Any], Any],
                 mountpoint: str | os.PathLike, lookahead: int = LOOKAHEAD) -> None:  # fmt: skip
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.sampler = sampler
        self.paths_of = paths_of
        self.mountpoint = mountpoint
        self.lookahead = lookahead

    def __len__(self) -> int:
        if not isinstance(self.sampler, Sized):
            raise TypeError("the wrapped sampler has no length")
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        indices = iter(self.sampler)
        drawn: deque[Any] = deque()  # taken from the sampler and hinted, not yet yielded
        hints = self._open()
        try:
            while True:  # bounded by the sampler
                if len(drawn) <= self.lookahead // 2:  # top up the window in one send
                    batch = list(islice(indices, self.lookahead - len(drawn)))
                    drawn.extend(batch)
                    hints = self._send(hints, batch)
                if not drawn:
                    return
                yield drawn.popleft()
        finally:
            if hints is not None:
                hints.close()

    def _open(self) -> Hints | None:
        try:
            return Hints(self.mountpoint)
        except UserError as error:
            log.warning("sampling without read hints: %s", error)
            return None

    def _send(self, hints: Hints | None, indices: list[Any]) -> Hints | None:
        if hints is None or not indices:
            return hints
        try:
            hints.send(path for index in indices for path in _paths(self.paths_of(index)))
            return hints
        except OSError as error:  # the mount went away: the reads will say so
            log.warning("read hints stopped: %s", error)
            hints.close()
            return None


def _paths(found: Any) -> list[str | os.PathLike]:
    return [found] if isinstance(found, str | os.PathLike) else list(found)
