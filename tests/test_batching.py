"""collect_batch: full batches, the max wait, partial last batches, and the stop event."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from stream.batching import collect_batch
from stream.queues import EndOfStream, StopFlag, Stopped, put_latest
from stream.types import Frame


def frame(index: int) -> Frame:
    image = np.zeros((2, 2, 3), np.uint8)
    return Frame(0, index, image, image, time.monotonic())


def queued(*items: object, maxsize: int = 0) -> queue.Queue:
    channel: queue.Queue = queue.Queue(maxsize)
    for item in items:
        channel.put(item)
    return channel


def test_takes_at_most_max_size_in_order() -> None:
    channel = queued(*(frame(i) for i in range(5)))
    batch = collect_batch(channel, StopFlag(), max_size=3, max_wait_ms=1000)
    assert [f.index for f in batch.frames] == [0, 1, 2] and batch.end is None
    batch = collect_batch(channel, StopFlag(), max_size=3, max_wait_ms=0)
    assert [f.index for f in batch.frames] == [3, 4]


def test_waits_no_longer_than_max_wait_after_the_first_frame() -> None:
    # given a single frame and no more coming
    channel = queued(frame(0))

    # when
    started = time.monotonic()
    batch = collect_batch(channel, StopFlag(), max_size=8, max_wait_ms=50)
    waited_s = time.monotonic() - started

    # then it gave up on filling the batch after about max_wait_ms
    assert len(batch.frames) == 1
    assert 0.045 <= waited_s < 1.0


def test_frames_arriving_within_the_wait_join_the_batch() -> None:
    # given a producer that sends a second frame 10 ms after the first
    channel = queued(frame(0))
    threading.Timer(0.01, channel.put, args=(frame(1),)).start()

    # when
    batch = collect_batch(channel, StopFlag(), max_size=2, max_wait_ms=2000)

    # then it returned as soon as the batch was full, not after the whole wait
    assert [f.index for f in batch.frames] == [0, 1]


def test_end_of_stream_flushes_a_partial_batch() -> None:
    end = EndOfStream(0)
    batch = collect_batch(queued(frame(0), frame(1), end), StopFlag(), max_size=8, max_wait_ms=1000)
    assert [f.index for f in batch.frames] == [0, 1] and batch.end is end


def test_end_of_stream_alone_is_an_empty_batch() -> None:
    end = EndOfStream(0)
    batch = collect_batch(queued(end), StopFlag(), max_size=8, max_wait_ms=1000)
    assert batch.frames == () and batch.end is end


def test_stop_interrupts_a_blocked_wait() -> None:
    stop = StopFlag()
    threading.Timer(0.05, stop.set).start()
    with pytest.raises(Stopped):
        collect_batch(queued(), stop, max_size=8, max_wait_ms=0)


def test_put_latest_evicts_the_oldest() -> None:
    channel = queued(frame(0), frame(1), maxsize=2)
    assert put_latest(channel, frame(2)) == 1
    assert [channel.get().index, channel.get().index] == [1, 2]
