"""The hinted read-ahead policy (pure): hints come out in the reader's order, never more
than the bounds ahead, and whatever the reader has passed is dropped."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from amlfs.hints import Hint, HintQueue


def queue_of(count: int, size: int = 10, **bounds: int) -> HintQueue:
    queue = HintQueue(**bounds)
    for key in range(count):
        assert queue.add(Hint(key, size))
    return queue


def drain(queue: HintQueue) -> list[Hint]:
    taken = []
    while (hint := queue.next_to_fetch()) is not None:
        taken.append(hint)
    return taken


def test_hints_are_fetched_in_the_order_given_up_to_the_files_ahead() -> None:
    queue = queue_of(10, files_ahead=4)
    assert [h.key for h in drain(queue)] == [0, 1, 2, 3]
    assert queue.ahead == 4 and queue.stats.hinted_fetches == 4


def test_a_fetch_that_lands_still_counts_as_ahead_until_the_reader_passes_it() -> None:
    queue = queue_of(10, files_ahead=2)
    first, second = drain(queue)
    queue.landed(first)
    queue.landed(second)
    assert queue.next_to_fetch() is None
    assert queue.started(0)
    assert queue.next_to_fetch().key == 2


def test_starting_a_hinted_file_drops_it_and_every_hint_before_it() -> None:
    queue = queue_of(10, files_ahead=3)
    drain(queue)
    assert queue.started(5)
    assert queue.keys() == [6, 7, 8, 9]
    assert queue.stats.hints_dropped == 5 and queue.stats.hinted_started == 1
    assert queue.ahead == 0
    assert [h.key for h in drain(queue)] == [6, 7, 8]


def test_starting_a_file_that_is_not_hinted_changes_nothing() -> None:
    queue = queue_of(5)
    assert not queue.started(99)
    assert queue.keys() == [0, 1, 2, 3, 4] and queue.stats.hints_dropped == 0


def test_bytes_being_fetched_are_bounded_but_one_large_file_may_go_alone() -> None:
    queue = HintQueue(files_ahead=10, bytes_ahead=100)
    for key, size in enumerate([60, 30, 20, 500]):
        queue.add(Hint(key, size))
    first, second = drain(queue)
    assert (first.key, second.key, queue.bytes_fetching) == (0, 1, 90)
    queue.landed(first)
    queue.landed(second)
    third = queue.next_to_fetch()
    assert third.key == 2 and queue.next_to_fetch() is None  # 20 + 500 > 100
    queue.landed(third)
    assert queue.next_to_fetch().key == 3 and queue.bytes_fetching == 500


def test_bytes_of_a_passed_fetch_count_until_it_lands() -> None:
    queue = queue_of(4, size=50, files_ahead=10, bytes_ahead=100)
    first, _ = drain(queue)
    queue.started(1)
    assert queue.bytes_fetching == 100 and queue.next_to_fetch() is None
    queue.landed(first)
    assert queue.bytes_fetching == 50
    assert queue.next_to_fetch().key == 2


def test_a_refused_fetch_waits_its_turn_again() -> None:
    queue = queue_of(3)
    hint = queue.next_to_fetch()
    queue.refused(hint)
    assert queue.ahead == 0 and queue.stats.hinted_fetches == 0
    assert queue.next_to_fetch() is hint


def test_the_list_is_bounded_and_a_repeated_hint_is_dropped() -> None:
    queue = queue_of(3, max_hints=4)
    assert not queue.add(Hint(0, 10))  # hinted already, not yet passed
    assert queue.add(Hint(3, 10))
    assert not queue.add(Hint(4, 10))  # full
    assert queue.keys() == [0, 1, 2, 3] and queue.stats.hints_dropped == 2


def test_a_new_list_drops_the_old_one_but_its_fetches_still_land() -> None:
    queue = queue_of(5, files_ahead=2)
    first, _ = drain(queue)
    queue.replace()
    assert len(queue) == 0 and queue.ahead == 0 and queue.stats.hints_dropped == 5
    assert queue.bytes_fetching == 20
    queue.landed(first)
    assert queue.bytes_fetching == 10


@given(
    count=st.integers(1, 40),
    steps=st.lists(st.tuples(st.sampled_from("fls"), st.integers(0, 45)), max_size=80),
)
def test_whatever_happens_the_bounds_hold_and_order_is_kept(count: int, steps: list) -> None:
    queue = queue_of(count, size=30, files_ahead=4, bytes_ahead=100)
    fetching: list[Hint] = []
    for action, number in steps:
        if action == "f":
            hint = queue.next_to_fetch()
            if hint is not None:
                fetching.append(hint)
        elif action == "l" and fetching:
            queue.landed(fetching.pop(number % len(fetching)))
        else:
            queue.started(number)
        assert queue.ahead <= 4 and queue.bytes_fetching <= 100
        keys = queue.keys()
        assert keys == sorted(keys)
    for hint in fetching:
        queue.landed(hint)
    assert queue.bytes_fetching == 0
