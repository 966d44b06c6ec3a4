"""The muxer: per-stream bounded queues, taken round robin into batches of up to `max_size` frames."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from stream import queues
from stream.queues import EndOfStream, StopFlag
from stream.types import Frame


@dataclass(frozen=True, slots=True)
class Batch:
    """Frames for one model call, and the streams that ended right after theirs."""

    frames: tuple[Frame, ...]
    ended: tuple[int, ...] = ()
    """Streams that finished right after their frames in this batch."""


class Muxer:
    """One bounded queue per stream in front of one batcher, like DeepStream's stream muxer.

    Each stream's capture thread is the only producer of its queue, so a live stream that drops its oldest frame
    only ever drops its own, and a stalled stream holds up nobody: batches are filled one frame per stream in
    turn, so a fast stream cannot starve a slow one either.
    """

    def __init__(self, stream_ids: Iterable[int], *, capacity: int) -> None:
        self._channels: dict[int, queue.Queue[Frame | EndOfStream]] = {
            stream_id: queue.Queue(maxsize=capacity) for stream_id in stream_ids
        }
        self._open = list(self._channels)
        self._turn = 0
        # Rung after every put, so an idle batcher wakes at once instead of polling every stream.
        self._doorbell = threading.Event()

    @property
    def is_open(self) -> bool:
        """Whether any stream may still send frames."""
        return bool(self._open)

    def put(self, frame: Frame, stop: StopFlag) -> None:
        """Queues a file's frame, waiting for room: files never drop.

        Raises:
            queues.Stopped: The run is stopping.
        """
        queues.put(self._channels[frame.stream_id], frame, stop)
        self._doorbell.set()

    def put_latest(self, frame: Frame) -> int:
        """Queues a live frame, evicting the stream's oldest ones when full; returns how many were evicted."""
        evicted = queues.put_latest(self._channels[frame.stream_id], frame)
        self._doorbell.set()
        return evicted

    def end(self, stream_id: int, stop: StopFlag) -> None:
        """Marks the end of a stream, after its last frame.

        Raises:
            queues.Stopped: The run is stopping.
        """
        queues.put(self._channels[stream_id], EndOfStream(stream_id), stop)
        self._doorbell.set()

    def collect(self, stop: StopFlag, *, max_size: int, max_wait_ms: float) -> Batch:
        """Waits for a first frame (or a stream's end), then takes more until `max_size` or `max_wait_ms` later.

        Raises:
            queues.Stopped: The run is stopping and nothing is queued.
        """
        frames: list[Frame] = []
        ended: list[int] = []
        deadline: float | None = None
        while True:
            self._doorbell.clear()
            self._take(frames, ended, max_size)
            if len(frames) >= max_size or not self._open or (ended and not frames):
                break
            if stop.is_set():
                # What was already queued still goes through, as a queue hands out what it holds.
                if frames:
                    break
                raise queues.Stopped
            now = time.monotonic()
            if frames:
                deadline = deadline or now + max_wait_ms / 1000
                if now >= deadline:
                    break
                self._doorbell.wait(min(deadline - now, queues.POLL_S))
            else:
                self._doorbell.wait(queues.POLL_S)
        return Batch(tuple(frames), tuple(ended))

    def _take(self, frames: list[Frame], ended: list[int], max_size: int) -> None:
        """Takes what is queued, one frame per open stream in turn, until full or every queue is empty."""
        took = True
        while took and len(frames) < max_size and self._open:
            took = False
            start = self._turn % len(self._open)
            for stream_id in self._open[start:] + self._open[:start]:
                if len(frames) >= max_size:
                    break
                try:
                    item = self._channels[stream_id].get_nowait()
                except queue.Empty:
                    continue
                took = True
                if isinstance(item, EndOfStream):
                    ended.append(stream_id)
                else:
                    frames.append(item)
            self._open = [stream_id for stream_id in self._open if stream_id not in ended]
            self._turn = start + 1
