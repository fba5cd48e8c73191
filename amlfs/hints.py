"""Hinted read-ahead policy: the files a reader says it reads next, in its order.

Pure decisions, no I/O (the mount daemon's hint server carries them out). A reader
that knows its order (a training loop's shuffled sampler) sends the paths it reads
next; the queue keeps them in that order, bounded in length, and hands out the next one
to fetch while fewer than FILES_AHEAD files (and BYTES_AHEAD bytes under way) are
ahead of the reader. When the reader starts a hinted file, that file and every hint
before it are passed: dropped, fetched or not, so the queue never holds what the reader
has left behind.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

MAX_HINTS = 4096  # paths kept per list; later ones are dropped until the reader moves on
# Hinted files fetched (or being fetched) that the reader has not started: more than the
# mount's requests to storage at once (8 by default), so that none of those idles while
# fetched files wait for the reader; fewer than the reader's 16 read-ahead runs at once,
# so that sequential read-ahead keeps some.
FILES_AHEAD = 12
BYTES_AHEAD = 64 * 1024 * 1024  # bytes of hinted files being fetched at once


@dataclass
class HintStats:
    hints_received: int = 0  # paths sent by readers
    hints_ignored: int = 0  # paths not naming a file of the version
    hints_dropped: int = 0  # hints passed, replaced or over the bound before being started
    hinted_fetches: int = 0  # hinted files fetched ahead of the reader
    hinted_started: int = 0  # hinted files the reader started

    def public(self) -> dict:
        return dict(self.__dict__)


# A hint's life: waiting, fetching, fetched; out of the list while being fetched it is
# passed until its fetch lands; out of the list otherwise, gone.
WAITING, FETCHING, FETCHED, PASSED, GONE = "waiting", "fetching", "fetched", "passed", "gone"


@dataclass
class Hint:
    """One hinted file: KEY names it (the mount uses its inode); BYTES are what fetching
    it ahead costs; WHAT is what the fetcher needs, opaque here."""

    key: Hashable
    bytes: int
    what: Any = None
    state: str = field(default=WAITING)


class HintQueue:
    """The current list of hints of one mount, in the reader's order."""

    def __init__(self, max_hints: int = MAX_HINTS, files_ahead: int = FILES_AHEAD,
                 bytes_ahead: int = BYTES_AHEAD) -> None:  # fmt: skip
        self.max_hints = max_hints
        self.files_ahead = files_ahead
        self.bytes_ahead = bytes_ahead
        self.stats = HintStats()
        self._hints: OrderedDict[Hashable, Hint] = OrderedDict()  # in the reader's order
        self._ahead = 0  # hints fetching or fetched: all of them ahead of the reader
        self._bytes_fetching = 0

    def __len__(self) -> int:
        return len(self._hints)

    @property
    def ahead(self) -> int:
        """Hinted files fetched or being fetched that the reader has not started."""
        return self._ahead

    @property
    def bytes_fetching(self) -> int:
        return self._bytes_fetching

    def keys(self) -> list[Hashable]:
        return list(self._hints)

    def replace(self) -> None:
        """A new list begins: the old hints are dropped (fetches under way go on, and
        their end is still reported with `landed`)."""
        for hint in self._hints.values():
            self._forget(hint)
        self.stats.hints_dropped += len(self._hints)
        self._hints.clear()

    def add(self, hint: Hint) -> bool:
        """Append HINT to the list; False when it is dropped (the list is full, or the
        file is hinted already and not yet passed)."""
        if len(self._hints) >= self.max_hints or hint.key in self._hints:
            self.stats.hints_dropped += 1
            return False
        self._hints[hint.key] = hint
        return True

    def started(self, key: Hashable) -> bool:
        """The reader started the file KEY: if hinted, it and every hint before it are
        passed. True when it was hinted."""
        if key not in self._hints:
            return False
        while True:  # bounded: KEY is in the list and comes out of it
            _, hint = self._hints.popitem(last=False)
            self._forget(hint)
            if hint.key == key:
                self.stats.hinted_started += 1
                return True
            self.stats.hints_dropped += 1

    def next_to_fetch(self) -> Hint | None:
        """The first hint not yet fetched, marked as being fetched, if the bounds allow:
        fewer than FILES_AHEAD ahead, and its bytes within BYTES_AHEAD under way (one
        file alone may exceed it)."""
        if self._ahead >= self.files_ahead:
            return None
        hint = next((h for h in self._hints.values() if h.state == WAITING), None)
        if hint is None:
            return None
        if self._bytes_fetching and self._bytes_fetching + hint.bytes > self.bytes_ahead:
            return None
        hint.state = FETCHING
        self._ahead += 1
        self._bytes_fetching += hint.bytes
        self.stats.hinted_fetches += 1
        return hint

    def refused(self, hint: Hint) -> None:
        """The fetch of HINT could not start (read-ahead is full): it waits again."""
        if hint.state != FETCHING:
            return
        hint.state = WAITING
        self._ahead -= 1
        self._bytes_fetching -= hint.bytes
        self.stats.hinted_fetches -= 1

    def landed(self, hint: Hint) -> None:
        """The fetch of HINT ended (in memory, or failed: a read will say why)."""
        if hint.state == FETCHING:
            hint.state = FETCHED
            self._bytes_fetching -= hint.bytes
        elif hint.state == PASSED:  # left the list while being fetched: its bytes are in
            hint.state = GONE
            self._bytes_fetching -= hint.bytes

    def _forget(self, hint: Hint) -> None:
        """HINT leaves the list: no longer ahead. Bytes being fetched stay counted until
        the fetch lands, so that memory stays bounded however fast hints are passed."""
        if hint.state in (FETCHING, FETCHED):
            self._ahead -= 1
        hint.state = PASSED if hint.state == FETCHING else GONE
