"""The stop flag, blocking queue operations that never outlive it, turns in order for work done in parallel, and the
end-of-stream marker.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Final, TypeVar

T = TypeVar("T")

POLL_S: Final = 0.1
"""How often a blocked thread looks at the stop flag: the bound on how late it notices."""


class StopFlag:
    """Set once to stop every stage; stages poll it.

    Unlike `threading.Event` it takes no lock, so a signal handler may set it: the handler runs on the main
    thread, which could be holding an Event's lock at that moment.
    """

    __slots__ = ("_is_set",)

    def __init__(self) -> None:
        self._is_set = False

    def set(self) -> None:
        self._is_set = True

    def is_set(self) -> bool:
        return self._is_set


class EndOfStream:
    """Sent downstream once by each producer when it is done, on the error path too.

    A capture thread sends its stream's id; the inference worker, serving every stream, sends None.
    """

    def __init__(self, stream_id: int | None) -> None:
        self.stream_id = stream_id

    def __repr__(self) -> str:
        return f"EndOfStream({self.stream_id})"


class Stopped(Exception):
    """The stop flag was set while a thread waited on a queue."""


def put(channel: queue.Queue[T], item: T, stop: StopFlag) -> None:
    """Waits for room, re-checking `stop`.

    Raises:
        Stopped: The run is stopping; the item was not queued.
    """
    while True:
        try:
            channel.put(item, timeout=POLL_S)
            return
        except queue.Full:
            if stop.is_set():
                raise Stopped from None


def put_latest(channel: queue.Queue[T], item: T) -> int:
    """Queues without waiting, evicting the oldest items when full; returns how many were evicted."""
    evicted = 0
    while True:
        try:
            channel.put_nowait(item)
            return evicted
        except queue.Full:
            try:
                channel.get_nowait()
                evicted += 1
            except queue.Empty:
                pass


def get(channel: queue.Queue[T], stop: StopFlag) -> T:
    """Waits for an item, re-checking `stop`; what is already queued is still handed out once it is set.

    Raises:
        Stopped: The run is stopping and nothing is left.
    """
    while True:
        try:
            return channel.get(timeout=POLL_S)
        except queue.Empty:
            if stop.is_set():
                raise Stopped from None


class Turns:
    """Lets threads through one at a time in the order of their tickets, 0, 1, 2...: work done in parallel goes
    on in the order it was taken.
    """

    def __init__(self) -> None:
        self._next = 0
        self._passed = threading.Condition()

    @contextlib.contextmanager
    def turn(self, ticket: int, stop: StopFlag) -> Iterator[None]:
        """Waits until every lower ticket has had its turn, re-checking `stop`; the next ticket's turn starts when
        this one's block ends, by an exception too.

        Raises:
            Stopped: The run is stopping while the turn is still ahead.
        """
        with self._passed:
            while self._next != ticket:
                if stop.is_set():
                    raise Stopped
                self._passed.wait(POLL_S)
        try:
            yield
        finally:
            with self._passed:
                self._next += 1
                self._passed.notify_all()
