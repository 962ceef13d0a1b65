"""Pieces worked on two at a time: results in order, both at once, an error stops what has not started; a stream
made ahead by a thread."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import profiling._threads as threads
from profiling._threads import made_ahead, two_at_a_time


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=0.004), max_size=12))
def test_results_come_in_the_items_order_whatever_finishes_first(delays):
    def work(item):
        position, delay = item
        time.sleep(delay)
        return position

    assert list(two_at_a_time(work, list(enumerate(delays)), name="test")) == list(range(len(delays)))


def test_two_pieces_are_worked_on_at_once(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    meeting = threading.Barrier(2, timeout=10)   # broken (an error) unless both pieces wait at once
    assert list(two_at_a_time(lambda item: (meeting.wait(), item)[1], ["a", "b"], name="test")) == ["a", "b"]


def test_one_core_works_one_piece_at_a_time(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    running, most = [], []

    def work(item):
        running.append(item)
        most.append(len(running))
        time.sleep(0.01)
        running.remove(item)
        return item

    assert list(two_at_a_time(work, range(5), name="test")) == list(range(5))
    assert max(most) == 1


def test_an_error_is_raised_at_its_turn_and_later_pieces_never_start():
    before, started, release = threading.active_count(), [], threading.Event()

    def work(item):
        started.append(item)
        if item == 0:
            release.wait(10)     # the first piece is slow; the second fails meanwhile
            return item
        if item == 1:
            release.set()
            raise OSError(28, "No space left on device")
        time.sleep(0.05)         # the later pieces take a while: the error comes before they have all started
        return item

    results = two_at_a_time(work, range(50), name="test")
    assert next(results) == 0
    with pytest.raises(OSError, match="No space left"):
        next(results)
    assert len(started) < 50     # the pieces after the error's were dropped, not worked on
    assert threading.active_count() == before    # the workers are gone


def test_a_caller_that_stops_early_leaves_no_piece_running():
    before, done = threading.active_count(), []

    def work(item):
        time.sleep(0.02)
        done.append(item)
        return item

    results = two_at_a_time(work, range(40), name="test")
    assert next(results) == 0
    results.close()              # the pieces running finish; the rest never start
    finished = len(done)
    time.sleep(0.1)
    assert len(done) == finished < 40
    assert threading.active_count() == before    # the workers are gone


def test_at_most_two_at_once_on_a_machine_of_many_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    lock, running, most = threading.Lock(), [0], [0]

    def work(item):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return item

    assert list(two_at_a_time(work, range(10), name="test")) == list(range(10))
    assert most[0] == threads.PIECES_AT_ONCE == 2


def test_items_are_taken_as_pieces_finish_not_all_at_once():
    taken = []

    def items():
        for item in range(1000):
            taken.append(item)
            yield item

    results = two_at_a_time(lambda item: item, items(), name="test", held=2)
    assert next(results) == 0
    assert len(taken) <= 3        # two pieces started and the one yielded: no more is held
    assert list(results) == list(range(1, 1000))


def test_a_thread_goes_on_while_the_caller_waits_for_a_slower_piece(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)

    def waiting_for_the_third():
        third_done = threading.Event()

        def work(item):
            if item == 0:
                assert third_done.wait(10), "the pieces after the slow first one were not worked on meanwhile"
            if item == 2:
                third_done.set()
            return item

        return work

    assert list(two_at_a_time(waiting_for_the_third(), range(6), name="test", held=3)) == list(range(6))
    # no bound: every item queued
    assert list(two_at_a_time(waiting_for_the_third(), range(6), name="test")) == list(range(6))


@pytest.mark.parametrize("held", [0, -1, 2.5, True, "3"])
def test_a_bad_bound_is_refused(held):
    with pytest.raises(ValueError, match="held must be a positive integer"):
        list(two_at_a_time(lambda item: item, range(3), name="test", held=held))


# --- a stream made ahead -------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=3))))
def test_a_stream_made_ahead_gives_every_item_in_order_none_included(items):
    assert list(made_ahead(iter(items), name="test")) == items


def test_the_next_item_is_made_while_the_caller_works_on_one():
    made_second = threading.Event()

    def stream():
        yield "first"
        made_second.set()
        yield "second"

    taken = []
    for item in made_ahead(stream(), name="test-ahead"):
        if item == "first":   # one after the other, the second is made only once the caller asks
            assert made_second.wait(timeout=10)
        taken.append(item)
    assert taken == ["first", "second"]


def test_an_error_making_an_item_is_raised_at_its_turn_in_the_callers_thread():
    makers = []

    def stream():
        makers.append(threading.current_thread().name)
        yield 1
        yield 2
        raise OSError("disk gone while reading")

    taken = []
    with pytest.raises(OSError, match="disk gone"):
        for item in made_ahead(stream(), name="test-ahead"):
            taken.append(item)
    assert taken == [1, 2] and makers[0].startswith("test-ahead")
