"""Read-ahead policy, pure decisions: how far ahead of each sequential reader to fetch,
when starting files one after another is a walk through a folder in listing order, and when
a block is worth reading whole rather than by range."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from amlfs.cache.readahead import (
    DEEPEST_WINDOW,
    DEPTH_MOST,
    FILES_AHEAD,
    FIRST_WINDOW,
    LATENCY_BASE_S,
    MAX_STREAMS,
    MAX_WINDOW,
    RUN_BLOCKS,
    BlockRanges,
    FolderWalk,
    SequentialReads,
    depth,
    files_ahead,
)

BLOCK = 1024 * 1024
KERNEL_READ = 128 * 1024


def windows(reads: SequentialReads, offsets: list[int], size: int, file_size: int) -> list[range]:
    return [reads.on_read(offset, size, BLOCK, file_size) for offset in offsets]


# --- SequentialReads --------------------------------------------------------------------


def test_reading_a_file_straight_through_grows_the_window_two_four_eight() -> None:
    reads = SequentialReads()
    grown = []
    for i in range(6):
        reads.on_read(i * BLOCK, BLOCK, BLOCK, 100 * BLOCK)
        grown.append(reads.window)
    assert grown == [FIRST_WINDOW, 4, MAX_WINDOW, MAX_WINDOW, MAX_WINDOW, MAX_WINDOW]


def test_read_ahead_goes_out_in_whole_requests_not_a_block_per_read() -> None:
    reads = SequentialReads()
    ahead = windows(reads, [i * BLOCK for i in range(7)], BLOCK, 100 * BLOCK)
    # The first window at once; then nothing until a request's worth of blocks fits.
    assert ahead == [range(1, 3), range(0), range(3, 11), range(0), range(0), range(0),
                     range(11, 15)]  # fmt: skip
    assert len(ahead[-1]) == RUN_BLOCKS


def test_every_block_of_a_file_read_straight_through_is_asked_for_once() -> None:
    reads = SequentialReads()
    file_size = 40 * BLOCK + 10  # blocks 0..40
    asked = [block for offset in range(0, file_size, KERNEL_READ)
             for block in reads.on_read(offset, KERNEL_READ, BLOCK, file_size)]  # fmt: skip
    assert asked == list(range(1, 41))


def test_the_window_starts_after_the_block_the_read_ends_in() -> None:
    reads = SequentialReads()
    assert reads.on_read(0, KERNEL_READ, BLOCK, 100 * BLOCK) == range(1, 3)
    assert reads.on_read(KERNEL_READ, KERNEL_READ, BLOCK, 100 * BLOCK) == range(0)
    # A read that ends exactly at a block's end looks ahead from the next block.
    assert reads.on_read(2 * KERNEL_READ, BLOCK - 2 * KERNEL_READ, BLOCK, 100 * BLOCK) == (
        range(3, 9)
    )


def test_kernel_reads_in_small_pieces_grow_the_window_to_its_cap() -> None:
    reads = SequentialReads()
    ahead = windows(reads, [i * KERNEL_READ for i in range(64)], KERNEL_READ, 100 * BLOCK)
    assert max(len(r) for r in ahead) <= MAX_WINDOW
    assert reads.window == MAX_WINDOW
    last_read_block = (64 * KERNEL_READ - 1) // BLOCK
    # Asked for ahead: the window, less at most one request's worth not yet due.
    frontier = max(r[-1] for r in ahead if r)
    assert last_read_block + MAX_WINDOW - RUN_BLOCKS < frontier <= last_read_block + MAX_WINDOW


def test_the_window_never_passes_the_last_block_of_the_file() -> None:
    reads = SequentialReads()
    file_size = 5 * BLOCK + 10  # blocks 0..5
    ahead = windows(reads, [i * BLOCK for i in range(6)], BLOCK, file_size)
    # The rest of the file goes out at once, although it is less than a request's worth.
    assert ahead == [range(1, 3), range(3, 6), range(0), range(0), range(0), range(0)]


def test_a_small_file_read_whole_has_nothing_ahead() -> None:
    assert SequentialReads().on_read(0, KERNEL_READ, BLOCK, 4096) == range(0)
    assert SequentialReads().on_read(0, KERNEL_READ, BLOCK, 0) == range(0)


def test_a_jump_resets_the_window() -> None:
    reads = SequentialReads()
    windows(reads, [0, BLOCK, 2 * BLOCK], BLOCK, 100 * BLOCK)
    assert reads.window == MAX_WINDOW
    assert reads.on_read(50 * BLOCK, BLOCK, BLOCK, 100 * BLOCK) == range(0)
    assert reads.window == 0
    # Reading on from where the jump landed is sequential again, from the first window.
    assert reads.on_read(51 * BLOCK, BLOCK, BLOCK, 100 * BLOCK) == range(52, 54)


def test_a_jump_backwards_resets_the_window_and_asks_again() -> None:
    reads = SequentialReads()
    windows(reads, [0, BLOCK, 2 * BLOCK], BLOCK, 100 * BLOCK)
    assert reads.on_read(0, BLOCK, BLOCK, 100 * BLOCK) == range(0)
    # What was asked for before may be gone by now: the new pass asks again.
    assert reads.on_read(BLOCK, BLOCK, BLOCK, 100 * BLOCK) == range(2, 4)


def test_the_first_read_away_from_the_start_is_not_sequential() -> None:
    assert SequentialReads().on_read(40 * BLOCK, BLOCK, BLOCK, 100 * BLOCK) == range(0)


def test_readers_going_through_one_file_at_different_places_each_get_a_window() -> None:
    reads = SequentialReads()
    reads.on_read(0, BLOCK, BLOCK, 100 * BLOCK)
    reads.on_read(50 * BLOCK, BLOCK, BLOCK, 100 * BLOCK)  # a second reader, half-way
    # Interleaved, neither resets the other: both grow their windows.
    assert reads.on_read(BLOCK, BLOCK, BLOCK, 100 * BLOCK) == range(0)  # 1, 2 under way
    assert reads.on_read(51 * BLOCK, BLOCK, BLOCK, 100 * BLOCK) == range(52, 54)
    assert reads.on_read(2 * BLOCK, BLOCK, BLOCK, 100 * BLOCK) == range(3, 11)
    assert reads.on_read(52 * BLOCK, BLOCK, BLOCK, 100 * BLOCK) == range(0)  # 53 under way
    assert reads.on_read(53 * BLOCK, BLOCK, BLOCK, 100 * BLOCK) == range(54, 62)


def test_the_streams_kept_per_file_are_bounded() -> None:
    reads = SequentialReads()
    for i in range(1000):
        reads.on_read(i * 7 * BLOCK % (90 * BLOCK), 4096, BLOCK, 100 * BLOCK)
    assert len(reads.streams) <= MAX_STREAMS


def test_reads_slightly_out_of_order_still_count_as_sequential() -> None:
    reads = SequentialReads()
    reads.on_read(0, KERNEL_READ, BLOCK, 100 * BLOCK)
    # The kernel's read-ahead asked for the piece after next before the next one.
    assert reads.on_read(2 * KERNEL_READ, KERNEL_READ, BLOCK, 100 * BLOCK) == range(0)
    assert reads.on_read(KERNEL_READ, KERNEL_READ, BLOCK, 100 * BLOCK) == range(3, 9)


@given(
    st.lists(
        st.tuples(st.integers(0, 64 * BLOCK), st.integers(1, 4 * BLOCK)), min_size=1, max_size=40
    ),
    st.integers(0, 64 * BLOCK),
)
def test_blocks_ahead_are_always_within_the_file_and_the_window(
    reads_made: list[tuple[int, int]], file_size: int
) -> None:
    reads = SequentialReads()
    last_block = (file_size - 1) // BLOCK
    for offset, size in reads_made:
        ahead = reads.on_read(offset, size, BLOCK, file_size)
        assert len(ahead) <= MAX_WINDOW
        assert 0 <= reads.window <= MAX_WINDOW
        if ahead:
            current = (offset + size - 1) // BLOCK
            assert ahead.step == 1
            assert ahead.start > current  # only blocks not yet read
            assert ahead[-1] <= min(last_block, current + reads.window)


# --- FolderWalk -------------------------------------------------------------------------


def test_starting_files_of_a_folder_in_ascending_ids_is_a_walk() -> None:
    walk = FolderWalk()
    assert walk.on_start(10, 11) is False  # a first file is not a walk yet
    assert [walk.on_start(10, entry) for entry in range(12, 20)] == [True] * 8


def test_skipping_a_few_entries_forward_is_still_a_walk() -> None:
    # Entry ids grow in name order but subfolders' entries come in between.
    walk = FolderWalk()
    walk.on_start(10, 100)
    assert walk.on_start(10, 100 + FILES_AHEAD + 1) is True


def test_a_big_jump_forward_is_not_a_walk() -> None:
    walk = FolderWalk()
    walk.on_start(10, 100)
    assert walk.on_start(10, 100 + FILES_AHEAD + 2) is False
    assert walk.on_start(10, 100 + FILES_AHEAD + 3) is True  # a walk from where it landed


def test_a_jump_backwards_or_the_same_file_again_is_not_a_walk() -> None:
    walk = FolderWalk()
    walk.on_start(10, 100)
    walk.on_start(10, 101)
    assert walk.on_start(10, 99) is False
    assert walk.on_start(10, 99) is False  # starting the same file twice


def test_folders_are_tracked_separately() -> None:
    walk = FolderWalk()
    walk.on_start(10, 100)
    walk.on_start(20, 500)  # another folder in between does not break the walk of the first
    assert walk.on_start(10, 101) is True
    assert walk.on_start(20, 501) is True
    assert walk.on_start(30, 102) is False  # nor does one folder's walk start another's


def test_the_folders_remembered_are_bounded() -> None:
    walk = FolderWalk()
    for folder in range(25_000):
        walk.on_start(folder, folder)
    assert len(walk.last_started) <= 10_001


# --- depth -----------------------------------------------------------------------------


def test_read_ahead_is_the_base_while_storage_answers_quickly() -> None:
    assert depth(0.0, 0.0) == depth(LATENCY_BASE_S, 0.0) == 1.0
    assert files_ahead(1.0) == FILES_AHEAD


def test_read_ahead_deepens_with_latency_up_to_a_bound() -> None:
    assert depth(2 * LATENCY_BASE_S, 0.0) == 2.0
    assert depth(10.0, 0.0) == DEPTH_MOST
    assert files_ahead(depth(0.020, 0.0)) == 4 * FILES_AHEAD  # a cloud store's 20 ms


def test_read_ahead_shrinks_as_memory_fills() -> None:
    assert depth(0.020, 0.5) == depth(0.020, 0.0) / 2
    assert depth(0.0, 1.0) == depth(0.0, 5.0) == 0.25  # never to nothing
    assert files_ahead(0.25) == 2


@given(st.floats(0, 100), st.integers(1, 64))
def test_the_window_ahead_of_a_reader_stays_bounded_whatever_the_depth(
    how_deep: float, reads: int
) -> None:
    sequential = SequentialReads()
    for i in range(reads):
        ahead = sequential.on_read(i * BLOCK, BLOCK, BLOCK, 1000 * BLOCK, how_deep)
        assert len(ahead) <= DEEPEST_WINDOW
    assert 1 <= sequential.window <= max(1, min(DEEPEST_WINDOW, round(MAX_WINDOW * how_deep)))


def test_a_deeper_read_ahead_lets_the_window_grow_further() -> None:
    sequential = SequentialReads()
    grown = []
    for i in range(8):
        sequential.on_read(i * BLOCK, BLOCK, BLOCK, 1000 * BLOCK, 2.0)
        grown.append(sequential.window)
    assert max(grown) == 2 * MAX_WINDOW


def test_the_window_never_outgrows_the_memory_that_holds_it() -> None:
    sequential = SequentialReads()
    for i in range(8):
        ahead = sequential.on_read(i * BLOCK, BLOCK, BLOCK, 1000 * BLOCK, DEPTH_MOST, 3)
        assert len(ahead) <= 3


# --- BlockRanges ------------------------------------------------------------------------


def test_a_block_read_straight_through_is_read_whole_from_its_second_read() -> None:
    ranges = BlockRanges()
    assert ranges.whole("b", 0, KERNEL_READ, BLOCK) is False  # one read: maybe random
    assert ranges.whole("b", KERNEL_READ, 2 * KERNEL_READ, BLOCK) is True  # it goes on


def test_a_read_covering_the_block_is_read_whole() -> None:
    assert BlockRanges().whole("b", 0, BLOCK, BLOCK) is True


@given(st.lists(st.integers(0, BLOCK // 4096 - 1), min_size=1, max_size=50, unique=True))
def test_random_reads_that_never_go_on_are_read_by_range(pages: list[int]) -> None:
    ranges = BlockRanges()
    ends = set()
    for page in pages:
        start = page * 4096
        whole = ranges.whole("b", start, start + 4096, BLOCK)
        assert whole == (start in ends)  # only a read starting where one ended goes on
        ends = set() if whole else {start + 4096}  # the last read's end, until it goes on


def test_blocks_are_told_apart_and_only_recent_ones_remembered() -> None:
    ranges = BlockRanges(remembered=2)
    for block in ("a", "b", "c"):
        ranges.whole(block, 0, 4096, BLOCK)
    assert ranges.whole("a", 4096, 8192, BLOCK) is False  # forgotten: the oldest
    assert ranges.whole("c", 4096, 8192, BLOCK) is True
