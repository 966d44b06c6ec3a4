"""The live row: a video replayed at a camera's pace through the pipeline, with each frame's capture-to-display time."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from stream import queues
from stream.bench.instruments import FrameTimes, SpawnClock, pipeline_stage_means, throughput_result
from stream.bench.results import LiveResult, RowResult, finite
from stream.config import Config, StreamConfig
from stream.events import Observers
from stream.metrics import RunStats
from stream.queues import StopFlag
from stream.sources import Decoded, Probed, Reconnect, open_reader
from stream.types import Frame, Prediction, SourceError, SourceKind
from stream.wiring import assemble


class PacedReader:
    """A video file, looped, delivering `frames` frames at `fps` of wall-clock time, as a camera does.

    It says it is a camera, so the pipeline treats it as one: when inference falls behind, the oldest queued
    frame is dropped and counted. Each frame is decoded first and handed over when it is due, so its capture
    time is its place in the schedule. The schedule starts once `starts` is set: a slow model load must not use up
    the replay, whose frames the pipeline would drop unseen.
    """

    def __init__(
        self, source: StreamConfig, *, fps: float, frames: int, starts: threading.Event, stop: StopFlag
    ) -> None:
        self._source = source
        self._reader = open_reader(source)
        file = self._reader.info
        self.info = dataclasses.replace(
            file, name=f"{file.name} at {fps:g} fps", kind=SourceKind.CAMERA, fps=fps, frame_count=None
        )
        self._interval_s = 1 / fps
        self._frames = frames
        self._next = 0
        self._starts = starts
        self._stop = stop
        self._started_at: float | None = None

    def read(self) -> Decoded | None:
        if self._next >= self._frames:
            return None
        item = self._reader.read()
        if item is None:
            self._reader.close()
            self._reader = open_reader(self._source)
            item = self._reader.read()
            if item is None:
                raise SourceError(f"{self.info.name} has no frames to replay")
        if self._started_at is None:
            while not self._starts.wait(queues.POLL_S):
                if self._stop.is_set():
                    return None
            self._started_at = time.monotonic()
        due_at = self._started_at + self._next * self._interval_s
        self._next += 1
        time.sleep(max(0.0, due_at - time.monotonic()))
        # A camera's frames have no place in a file.
        return dataclasses.replace(item, position_s=None)

    def reopen(self, stop: StopFlag) -> bool:
        # The replay ran its course: the end of the run, not a camera to wait for.
        return False

    def close(self) -> None:
        self._reader.close()


class LatencyRecorder:
    """Stands in for the window: keeps each annotated frame's capture time and capture-to-display latency."""

    needs_overlay = True
    reads_image = True

    def __init__(self, capacity: int) -> None:
        self._captured_at = np.empty(capacity)
        self._latency_ms = np.empty(capacity)
        self._count = 0

    def write(self, frame: Frame, prediction: Prediction) -> None:
        if self._count < len(self._captured_at):
            self._captured_at[self._count] = frame.captured_at
            self._latency_ms[self._count] = (time.monotonic() - frame.captured_at) * 1000
            self._count += 1

    def close(self) -> None:
        pass

    @property
    def captured_at(self) -> np.ndarray:
        return self._captured_at[: self._count]

    @property
    def latency_ms(self) -> np.ndarray:
        return self._latency_ms[: self._count]


def live_row(config: Config, *, duration_s: float, fps: float, clock: SpawnClock) -> RowResult:
    """Runs the pipeline on the video replayed at `fps` for `duration_s` and summarises its latency.

    Args:
        config: The run's config; its source must be a video file.
        duration_s: How long the replay lasts.
        fps: Its pace.
        clock: The spawn clock, for the time to the first frame.
    """
    frames = max(1, round(duration_s * fps))
    stop, model_ready = StopFlag(), threading.Event()
    reader = PacedReader(config.input.streams[0], fps=fps, frames=frames, starts=model_ready, stop=stop)
    recorder = LatencyRecorder(frames)
    stats, times = RunStats(), FrameTimes()
    pipeline = assemble(
        config,
        [Probed(reader)],
        [recorder],
        observer=Observers([stats, times]),
        stop=stop,
        model_ready=model_ready,
        # No reconnecting: the replay's end is the end of the run, not a lost camera worth waiting for.
        reconnect=Reconnect(),
    )
    pipeline.run()
    inference = stats.latency["inference"]
    live = summarise_live(
        recorder.captured_at,
        recorder.latency_ms,
        fps=fps,
        duration_s=duration_s,
        frames_read=stats.counters.read,
        dropped=stats.counters.dropped,
        inference_mean_ms=finite(inference.mean_ms),
        inference_p95_ms=finite(inference.percentile_ms(95)),
    )
    result = throughput_result(
        "live",
        times,
        since=stats.started_at,
        clock=clock,
        batch_size=config.batching.batch_size,
        # The reader's decode time includes waiting for the frame's turn: not a decode cost.
        stage_ms=pipeline_stage_means(stats, without=("decode",)),
    )
    return dataclasses.replace(result, live=live)


def summarise_live(
    captured_at: np.ndarray,
    latency_ms: np.ndarray,
    *,
    fps: float,
    duration_s: float,
    frames_read: int,
    dropped: int,
    inference_mean_ms: float | None,
    inference_p95_ms: float | None,
) -> LiveResult:
    """Latency percentiles overall and in the first and last thirds of the run (by capture time).

    Args:
        captured_at: Each shown frame's capture time (monotonic seconds), in display order.
        latency_ms: Each shown frame's capture-to-display latency.
        fps: The source's pace.
        duration_s: How long the source ran.
        frames_read: Frames the source delivered.
        dropped: Frames dropped before inference.
        inference_mean_ms: Mean time of one model call.
        inference_p95_ms: Its p95.
    """
    thirds: tuple[float | None, float | None] = (None, None)
    if len(captured_at):
        start, span = captured_at[0], captured_at[-1] - captured_at[0]
        thirds = (
            _p95(latency_ms[captured_at < start + span / 3]),
            _p95(latency_ms[captured_at >= start + 2 * span / 3]),
        )
    return LiveResult(
        fps=fps,
        duration_s=duration_s,
        frames_read=frames_read,
        frames_shown=len(latency_ms),
        dropped=dropped,
        latency_p50_ms=_percentile(latency_ms, 50),
        latency_p95_ms=_p95(latency_ms),
        latency_max_ms=float(latency_ms.max()) if len(latency_ms) else None,
        first_third_p95_ms=thirds[0],
        last_third_p95_ms=thirds[1],
        inference_mean_ms=inference_mean_ms,
        inference_p95_ms=inference_p95_ms,
    )


def _percentile(values: np.ndarray, percent: float) -> float | None:
    return float(np.percentile(values, percent)) if len(values) else None


def _p95(values: np.ndarray) -> float | None:
    return _percentile(values, 95)
