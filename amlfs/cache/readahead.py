"""Read-ahead policy: which blocks and which files to fetch before they are asked for.

Pure decisions, no I/O: the reader carries them out. Sequential reading of a file grows
a window of blocks ahead of the reader; a walk through a folder in listing order (an
image dataset read file by file) gets the next few files fetched ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_WINDOW = 2  # blocks ahead once a read looks sequential
MAX_WINDOW = 8  # blocks ahead at most (× block size is the memory a reader may pin)
FILES_AHEAD = 8  # next files of a folder fetched while it is walked in order


@dataclass
class SequentialReads:
    """Per open file: is the reader going straight through, and how far ahead to go."""

    next_offset: int = 0
    window: int = 0

    def on_read(self, offset: int, size: int, block_size: int, file_size: int) -> range:
        """Record a read; the block indices worth fetching ahead of it (maybe none)."""
        # Kernel read-ahead may reorder neighbouring requests a little: within a block of
        # where the last read ended still counts as going straight on.
        sequential = abs(offset - self.next_offset) <= block_size
        self.next_offset = offset + size
        if not sequential:
            self.window = 0
            return range(0)
        self.window = min(MAX_WINDOW, self.window * 2 if self.window else FIRST_WINDOW)
        last_block = (file_size - 1) // block_size if file_size else -1
        current = (offset + size - 1) // block_size
        return range(current + 1, min(last_block, current + self.window) + 1)


@dataclass
class FolderWalk:
    """Per mount: the last file opened in each folder, to spot walks in listing order.

    Entry ids of one folder grow in name order, so opening a file whose id is just above
    the previous one's in the same folder is a step forward through the listing.
    """

    last_opened: dict[int, int]

    def __init__(self) -> None:
        self.last_opened = {}

    def on_open(self, folder_id: int, entry_id: int) -> bool:
        """Record an open; True when it continues a walk forward through the folder."""
        previous = self.last_opened.get(folder_id)
        if len(self.last_opened) > 10_000:  # bounded: a walk only needs recent folders
            self.last_opened.clear()
        self.last_opened[folder_id] = entry_id
        return previous is not None and previous < entry_id <= previous + FILES_AHEAD + 1
