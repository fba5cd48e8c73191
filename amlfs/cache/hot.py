"""A small in-memory set of recently used blocks, bounded in bytes.

Reads from the kernel arrive 128 KiB at a time; keeping the few blocks being read in
memory means a 4 MiB block is taken from disk once, not once per kernel read. Used from
the event-loop thread only, so it needs no lock.
"""

from __future__ import annotations

from collections import OrderedDict

from amlfs.cache.blocks import BlockKey


class HotBlocks:
    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._blocks: OrderedDict[BlockKey, bytes] = OrderedDict()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: BlockKey) -> bytes | None:
        data = self._blocks.get(key)
        if data is not None:
            self._blocks.move_to_end(key)
        return data

    def put(self, key: BlockKey, data: bytes) -> None:
        if len(data) > self.limit_bytes:
            return
        old = self._blocks.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        self._blocks[key] = data
        self._bytes += len(data)
        while self._bytes > self.limit_bytes:
            _, evicted = self._blocks.popitem(last=False)
            self._bytes -= len(evicted)

    def clear(self) -> None:
        self._blocks.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._blocks)
