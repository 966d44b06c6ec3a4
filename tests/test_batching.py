"""The muxer: full batches, the max wait, partial last batches, ends, fairness across streams, and the stop flag."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from stream.batching import Muxer
from stream.queues import StopFlag, Stopped, Turns
from stream.types import Frame


def frame(index: int, stream_id: int = 0) -> Frame:
    image = np.zeros((2, 2, 3), np.uint8)
    return Frame(stream_id, index, image, image, time.monotonic())


def muxer_with(*frames: Frame, streams: tuple[int, ...] = (0,), capacity: int = 64) -> Muxer:
    muxer = Muxer(streams, capacity=capacity)
    for item in frames:
        muxer.put(item, StopFlag())
    return muxer


def indices(frames: tuple[Frame, ...]) -> list[tuple[int, int]]:
    return [(f.stream_id, f.index) for f in frames]


def test_takes_at_most_max_size_in_order() -> None:
    muxer = muxer_with(*(frame(i) for i in range(5)))
    batch = muxer.collect(StopFlag(), max_size=3, max_wait_ms=1000)
    assert indices(batch.frames) == [(0, 0), (0, 1), (0, 2)] and batch.ended == ()
    batch = muxer.collect(StopFlag(), max_size=3, max_wait_ms=0)
    assert indices(batch.frames) == [(0, 3), (0, 4)]


def test_waits_no_longer_than_max_wait_after_the_first_frame() -> None:
    # given a single frame and no more coming
    muxer = muxer_with(frame(0))

    # when
    started = time.monotonic()
    batch = muxer.collect(StopFlag(), max_size=8, max_wait_ms=50)
    waited_s = time.monotonic() - started

    # then it gave up on filling the batch after about max_wait_ms
    assert len(batch.frames) == 1
    assert 0.045 <= waited_s < 1.0


def test_frames_arriving_within_the_wait_join_the_batch() -> None:
    # given a producer that sends a second frame 10 ms after the first
    muxer = muxer_with(frame(0))
    threading.Timer(0.01, muxer.put, args=(frame(1), StopFlag())).start()

    # when
    batch = muxer.collect(StopFlag(), max_size=2, max_wait_ms=2000)

    # then it returned as soon as the batch was full, not after the whole wait
    assert indices(batch.frames) == [(0, 0), (0, 1)]


def test_end_of_stream_flushes_a_partial_batch() -> None:
    muxer = muxer_with(frame(0), frame(1))
    muxer.end(0, StopFlag())
    batch = muxer.collect(StopFlag(), max_size=8, max_wait_ms=1000)
    assert indices(batch.frames) == [(0, 0), (0, 1)] and batch.ended == (0,)
    assert not muxer.is_open


def test_end_of_stream_alone_is_an_empty_batch() -> None:
    muxer = muxer_with(frame(0), streams=(0, 1))
    muxer.collect(StopFlag(), max_size=1, max_wait_ms=0)
    muxer.end(1, StopFlag())
    batch = muxer.collect(StopFlag(), max_size=8, max_wait_ms=1000)
    assert batch.frames == () and batch.ended == (1,) and muxer.is_open


def test_streams_take_turns_so_a_busy_stream_cannot_starve_another() -> None:
    # given a busy stream with many frames queued and a quiet one with two
    busy = [frame(i, stream_id=0) for i in range(10)]
    quiet = [frame(i, stream_id=1) for i in range(2)]
    muxer = muxer_with(*busy, *quiet, streams=(0, 1))

    # when
    batch = muxer.collect(StopFlag(), max_size=4, max_wait_ms=0)

    # then both streams share the batch equally, each in its own order
    taken = indices(batch.frames)
    assert [index for stream, index in taken if stream == 0] == [0, 1]
    assert [index for stream, index in taken if stream == 1] == [0, 1]


def test_stop_interrupts_a_blocked_wait() -> None:
    stop = StopFlag()
    threading.Timer(0.05, stop.set).start()
    with pytest.raises(Stopped):
        Muxer([0], capacity=2).collect(stop, max_size=8, max_wait_ms=0)


def test_live_put_evicts_the_stream_s_own_oldest() -> None:
    # given two streams, one full
    muxer = muxer_with(frame(0, 0), frame(1, 0), frame(0, 1), streams=(0, 1), capacity=2)

    # when the full one gets a live frame
    evicted = muxer.put_latest(frame(2, 0))

    # then only its own oldest frame went
    assert evicted == 1
    batch = muxer.collect(StopFlag(), max_size=8, max_wait_ms=0)
    assert sorted(indices(batch.frames)) == [(0, 1), (0, 2), (1, 0)]


def test_a_stream_with_nothing_queued_holds_up_no_batch() -> None:
    # given a frame of a live stream, and a stalled stream beside it with nothing queued
    muxer = muxer_with(frame(0, stream_id=0), streams=(0, 1))
    stop = StopFlag()
    watchdog = threading.Timer(5, stop.set)  # a batcher waiting on the stalled stream would only end at the stop
    watchdog.start()

    # when a live batch is collected, which waits for nothing
    batch = muxer.collect(stop, max_size=8, max_wait_ms=0)
    watchdog.cancel()

    # then the live frame went in before anything stopped the wait
    assert not stop.is_set()
    assert indices(batch.frames) == [(0, 0)]


def test_turns_let_threads_through_in_ticket_order_whatever_order_they_arrive_in() -> None:
    # given three threads that arrive with their tickets in reverse order
    turns, stop = Turns(), StopFlag()
    entered: list[int] = []

    def take_turn(ticket: int) -> None:
        with turns.turn(ticket, stop):
            entered.append(ticket)

    threads = [threading.Thread(target=take_turn, args=(ticket,)) for ticket in (2, 1, 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then
    assert entered == [0, 1, 2]


def test_a_turn_passes_on_when_its_holder_raises_and_stop_ends_a_wait_for_one_that_never_comes() -> None:
    turns, stop = Turns(), StopFlag()
    with pytest.raises(ValueError), turns.turn(0, stop):
        raise ValueError("the batch failed")
    with turns.turn(1, stop):
        pass

    threading.Timer(0.05, stop.set).start()
    with pytest.raises(Stopped), turns.turn(3, stop):
        pass
