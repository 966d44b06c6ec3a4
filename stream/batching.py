"""Collecting a batch: up to `max_size` frames, or whatever came within `max_wait_ms` of the first."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass

from stream import queues
from stream.queues import EndOfStream, StopFlag
from stream.types import Frame


@dataclass(frozen=True, slots=True)
class Batch:
    frames: tuple[Frame, ...]
    end: EndOfStream | None = None
    """Set when the producer finished right after these frames (a partial last batch, or none)."""


def collect_batch(
    channel: queue.Queue[Frame | EndOfStream], stop: StopFlag, *, max_size: int, max_wait_ms: float
) -> Batch:
    """Blocks for the first frame, then takes more until the batch is full or `max_wait_ms` has passed.

    Raises:
        queues.Stopped: The run is stopping.
    """
    first = queues.get(channel, stop)
    if isinstance(first, EndOfStream):
        return Batch((), first)
    frames = [first]
    deadline = time.monotonic() + max_wait_ms / 1000
    while len(frames) < max_size:
        try:
            item = queues.get(channel, stop, timeout_s=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            break
        if isinstance(item, EndOfStream):
            return Batch(tuple(frames), item)
        frames.append(item)
    return Batch(tuple(frames))
