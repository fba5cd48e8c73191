"""What fake stores of the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator

from amlfs.storage import cut


class ReadsInPieces:
    """Store.read_pinned_pieces for a fake that has read_pinned: one read, cut, as the
    real Store does off Azure (on Azure the pieces come from one streamed request)."""

    def read_pinned_pieces(self, relative: str, start: int, lengths: list[int], etag: str
                           ) -> Iterator[bytes]:  # fmt: skip
        data = self.read_pinned(relative, start, start + sum(lengths), etag)  # type: ignore[attr-defined]
        yield from cut(data, lengths)
