"""What a run's frames take in memory, against what the machine has left."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from stream.pipeline import BATCHES_IN_FLIGHT
from stream.types import SourceInfo

log = logging.getLogger(__name__)


def frames_held(streams: int, *, queue_size: int, batch_size: int) -> int:
    """The most frames a run holds at once.

    Each stream's queue before the model, the batches in the model, the queue of results after it, and one frame
    each on the capture threads and the drawing thread.
    """
    return streams * (queue_size + 1) + BATCHES_IN_FLIGHT * batch_size + queue_size + 1


def frame_bytes(infos: Sequence[SourceInfo]) -> int:
    """The largest decoded frame of the run's sources, in bytes (BGR, 8 bits)."""
    return max((info.width * info.height * 3 for info in infos), default=0)


def warn_if_frames_exceed_memory(streams: int, *, queue_size: int, batch_size: int, bytes_each: int) -> None:
    """Warns when the queues could hold more frames of `bytes_each` than the machine has memory for."""
    needed = frames_held(streams, queue_size=queue_size, batch_size=batch_size) * bytes_each
    available = _available_bytes()
    if available is not None and needed > available:
        log.warning(
            f"--queue-size {queue_size} and --batch-size {batch_size} let this run hold up to "
            f"{needed / 2**30:.1f} GiB of frames, more than the {available / 2**30:.1f} GiB of memory available; "
            "lower them"
        )


def _available_bytes() -> int | None:
    """Memory the kernel says is available (Linux), or else all of it; None where neither can be told."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
