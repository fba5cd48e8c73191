"""Read-ahead policy: which blocks and which files to fetch before they are asked for.

Pure decisions, no I/O: the reader carries them out. Sequential reading of a file grows
a window of blocks ahead of the reader; a walk through a folder in listing order (an
image dataset read file by file) gets the next few files fetched ahead; a block read
straight through is worth taking whole into memory, where one read here and there of it
is served by range from the disk cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

FIRST_WINDOW = 2  # blocks ahead once a read looks sequential
MAX_WINDOW = 8  # blocks ahead at most (× block size is the memory a reader may pin)
FILES_AHEAD = 8  # next files of a folder fetched while it is walked in order
BLOCKS_REMEMBERED = 256  # blocks whose last read's end is kept, to spot reads straight on
LATENCY_BASE_S = 0.005  # storage answering within this: the base read-ahead covers it
DEPTH_MOST = 4.0  # read-ahead reaches at most this many times the base
DEEPEST_WINDOW = 16  # blocks ahead of one reader whatever the depth (4 MiB blocks: 64 MiB)
RUN_BLOCKS = 4  # neighbouring blocks read ahead are asked for in one request, up to this many


MAX_STREAMS = 4  # readers going straight through one file at once, told apart by offset


@dataclass
class Stream:
    next_offset: int = 0
    window: int = 0
    asked_to: int = -1  # the last block asked for ahead of this reader


@dataclass
class SequentialReads:
    """Per file: the readers going straight through it (several at once, at different
    places, as fio jobs or a data loader's workers do), and how far ahead of each to go."""

    streams: list[Stream] = field(default_factory=list)  # least recently read first

    @property
    def window(self) -> int:
        """The window of the stream read last."""
        return self.streams[-1].window if self.streams else 0

    def on_read(self, offset: int, size: int, block_size: int, file_size: int,
                depth: float = 1.0, room: int = DEEPEST_WINDOW) -> range:  # fmt: skip
        """Record a read; the blocks to ask for ahead of it now (maybe none): those of its
        window not asked for yet, at most MAX_WINDOW × DEPTH of them (see `depth`) and at
        most ROOM (the blocks that memory holds for a reader)."""
        # Kernel read-ahead may reorder neighbouring requests a little: within a block of
        # where a stream's last read ended still counts as going straight on.
        stream = next((s for s in self.streams if abs(offset - s.next_offset) <= block_size), None)
        if stream is not None:
            sequential = True
            self.streams.remove(stream)
        else:  # a new reader, or one that jumped; a file's first read near its start is on
            sequential = not self.streams and offset <= block_size
            stream = Stream()
        self.streams.append(stream)
        del self.streams[:-MAX_STREAMS]
        stream.next_offset = offset + size
        if not sequential:
            stream.window, stream.asked_to = 0, -1
            return range(0)
        most = max(1, min(DEEPEST_WINDOW, room, round(MAX_WINDOW * depth)))
        stream.window = min(most, stream.window * 2 if stream.window else FIRST_WINDOW)
        last_block = (file_size - 1) // block_size if file_size else -1
        current = (offset + size - 1) // block_size
        end = min(last_block, current + stream.window)
        start = max(current + 1, stream.asked_to + 1)
        # While the next block is already asked for, wait until a whole request's worth
        # of blocks fits in the window (or the file ends in it): read-ahead then goes out
        # as a few large requests, not one block per read, and storage's cost per request
        # (a round trip on a real link, tens of ms of CPU in the emulator) is paid rarely.
        if start > end or (start > current + 1 and end - start + 1 < RUN_BLOCKS
                           and end < last_block):  # fmt: skip
            return range(0)
        stream.asked_to = end
        return range(start, end + 1)


def depth(latency_s: float, pressure: float) -> float:
    """How many times the base read-ahead to go ahead (files ahead of a walk, blocks
    ahead of a sequential reader). Deeper in proportion to the time storage takes to
    answer a request (LATENCY_S), from 1 up to DEPTH_MOST, so that what is under way
    covers a round trip at the reader's pace; shallower as the blocks waiting to be
    written to the disk cache fill their bound (PRESSURE, the filled fraction), down to
    a quarter."""
    reach = min(DEPTH_MOST, max(1.0, latency_s / LATENCY_BASE_S))
    room = min(1.0, max(0.25, 1.0 - pressure))
    return reach * room


def files_ahead(depth: float) -> int:
    """The files of a folder walked in order to fetch ahead of the one started."""
    return max(1, round(FILES_AHEAD * depth))


@dataclass
class FolderWalk:
    """Per mount: the last file started (read from its first byte) in each folder, to
    spot walks in listing order.

    Entry ids of one folder grow in name order, so starting a file whose id is just above
    the previous one's in the same folder is a step forward through the listing.
    """

    last_started: dict[int, int]

    def __init__(self) -> None:
        self.last_started = {}

    def on_start(self, folder_id: int, entry_id: int) -> bool:
        """Record a file's start; True when it continues a walk forward through the folder."""
        previous = self.last_started.get(folder_id)
        if len(self.last_started) > 10_000:  # bounded: a walk only needs recent folders
            self.last_started.clear()
        self.last_started[folder_id] = entry_id
        return previous is not None and previous < entry_id <= previous + FILES_AHEAD + 1


class BlockRanges:
    """Per mount: where the last read of each recently read block ended, to tell a block
    read straight through from one read here and there.

    Only a read that starts exactly where the last one ended counts as going on: a
    random reader that lands near its last read must not cost a whole block each time.
    """

    def __init__(self, remembered: int = BLOCKS_REMEMBERED) -> None:
        self.remembered = remembered
        self._ends: OrderedDict[Hashable, int] = OrderedDict()

    def whole(self, block: Hashable, start: int, end: int, length: int) -> bool:
        """Record a read of bytes [START, END) of BLOCK, LENGTH bytes long; True when the
        whole block is worth reading: the read covers it, or goes on from the last one."""
        goes_on = self._ends.pop(block, None) == start
        if goes_on or (start == 0 and end >= length):
            return True
        self._ends[block] = end
        if len(self._ends) > self.remembered:
            self._ends.popitem(last=False)
        return False
