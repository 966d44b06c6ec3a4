"""What the rows measure with: the spawn clock, stage timers, peak memory, a frame limit and frame times."""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator

from stream.bench.results import RowResult, RowStatus, finite
from stream.events import Event, FrameWritten
from stream.metrics import LatencyHistogram, RunStats
from stream.queues import StopFlag
from stream.sources import Decoded, FrameReader

PIPELINE_STAGES = {
    "decode": "decode",
    "preprocess": "resize",
    "queue": "queued",
    "inference": "inference",
    "postprocess": "postprocess",
    "overlay": "overlay",
    "sinks": "sinks",
    "end to end": "end to end",
}
"""The benchmark's stage names -> the pipeline's `RunStats.latency` keys."""


@dataclasses.dataclass(frozen=True, slots=True)
class SpawnClock:
    """Seconds since the parent started this process, so start-up times include the interpreter and imports."""

    spawned_at: float
    """The parent's `time.time()` just before it spawned this process."""

    def since_spawn(self, monotonic_at: float) -> float:
        """A `time.monotonic()` instant of this process as seconds after the spawn (wall clock across processes)."""
        return time.time() - (time.monotonic() - monotonic_at) - self.spawned_at


class StageTimer:
    """Per-stage millisecond histograms for the rows that run their own loop."""

    def __init__(self) -> None:
        self._histograms: defaultdict[str, LatencyHistogram] = defaultdict(LatencyHistogram)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Times the block as one sample of `stage`."""
        started_at = time.monotonic()
        yield
        self.record(stage, started_at)

    def record(self, stage: str, started_at: float) -> None:
        """Adds the time from `started_at` until now as one sample of `stage`."""
        self._histograms[stage].add((time.monotonic() - started_at) * 1000)

    def means_ms(self) -> dict[str, float | None]:
        return {stage: finite(histogram.mean_ms) for stage, histogram in self._histograms.items()}


def pipeline_stage_means(stats: RunStats, *, without: tuple[str, ...] = ()) -> dict[str, float | None]:
    """The pipeline's own per-stage means under the benchmark's stage names."""
    return {stage: finite(stats.latency[key].mean_ms) for stage, key in PIPELINE_STAGES.items() if stage not in without}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


class FirstFrames:
    """A reader that ends after `limit` frames: the benchmark's `--frames` on any FrameReader."""

    def __init__(self, reader: FrameReader, limit: int) -> None:
        count = reader.info.frame_count
        self.info = dataclasses.replace(reader.info, frame_count=min(count, limit) if count else None)
        self._reader = reader
        self._left = limit

    def read(self) -> Decoded | None:
        if self._left <= 0:
            return None
        self._left -= 1
        return self._reader.read()

    def reopen(self, stop: StopFlag) -> bool:
        # Its frames are read: it has ended, as a file does.
        return False

    def close(self) -> None:
        self._reader.close()


def limited(reader: FrameReader, frames: int | None) -> FrameReader:
    """`reader`, ending after `frames` frames when given."""
    return reader if frames is None else FirstFrames(reader, frames)


class FrameTimes:
    """Counts frames done and keeps when the first and the last were done.

    Subscribed to a pipeline, it counts the frames written; the rows with their own loop tick it themselves.
    """

    def __init__(self) -> None:
        self.count = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.count += 1
        if self.first_at is None:
            self.first_at = now
        self.last_at = now

    def notify(self, event: Event) -> None:
        if isinstance(event, FrameWritten):
            self.tick(event.at)


def throughput_result(
    row: str,
    times: FrameTimes,
    *,
    since: float,
    clock: SpawnClock,
    batch_size: int,
    stage_ms: dict[str, float | None],
) -> RowResult:
    """A measured row: frames per second from `since` (after the model loaded) to the last frame done.

    Args:
        row: The row's name.
        times: The frames done.
        since: `time.monotonic()` when the frames started to flow.
        clock: The spawn clock, for the time to the first frame.
        batch_size: Frames per model call.
        stage_ms: Per-stage means.
    """
    span = None if times.last_at is None else times.last_at - since
    return RowResult(
        row,
        RowStatus.OK,
        frames=times.count,
        frames_per_s=times.count / span if span else None,
        first_frame_s=None if times.first_at is None else clock.since_spawn(times.first_at),
        batch_size=batch_size,
        stage_ms=stage_ms,
    )
