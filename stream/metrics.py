"""Counters, frame-rate and latency meters; fixed memory however long the run."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from stream.events import (
    Event,
    FrameInferred,
    FrameRead,
    FramesDropped,
    FramesUndecodable,
    FrameWritten,
    ModelReady,
    RunEnded,
    SourceBack,
    SourceLost,
    StreamEnded,
)


@dataclass(slots=True)
class StreamCounters:
    """Each count has one writer thread: inferred the inference worker, written the main thread, the others the
    capture thread.
    """

    read: int = 0
    dropped: int = 0
    inferred: int = 0
    written: int = 0
    undecodable: int = 0
    """Frames the source sent that could not be decoded, skipped."""
    reconnects: int = 0
    lost_s: float = 0.0
    """Seconds a live source delivered nothing while it was being reconnected."""


class LatencyHistogram:
    """Mean and percentiles of millisecond samples in log-spaced buckets (about 1% wide), in constant memory."""

    _LOWEST_MS = 0.01
    _BUCKETS_PER_DECADE = 200
    _DECADES = 8  # 0.01 ms to 1,000 s

    def __init__(self) -> None:
        self._counts = np.zeros(self._BUCKETS_PER_DECADE * self._DECADES + 1, dtype=np.int64)
        self._total_ms = 0.0
        self._max_ms = 0.0
        # The capture threads of several streams share the decode and resize histograms.
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        position = math.log10(max(ms, self._LOWEST_MS) / self._LOWEST_MS) * self._BUCKETS_PER_DECADE
        with self._lock:
            self._total_ms += ms
            self._max_ms = max(self._max_ms, ms)
            self._counts[min(int(position), len(self._counts) - 1)] += 1

    @property
    def count(self) -> int:
        return int(self._counts.sum())

    @property
    def mean_ms(self) -> float:
        return self._total_ms / self.count if self.count else math.nan

    @property
    def max_ms(self) -> float:
        return self._max_ms if self.count else math.nan

    def percentile_ms(self, percent: float) -> float:
        """The upper edge of the bucket holding that percentile (never above the largest sample)."""
        if not self.count:
            return math.nan
        bucket = int(np.searchsorted(np.cumsum(self._counts), math.ceil(self.count * percent / 100)))
        upper = self._LOWEST_MS * 10 ** ((bucket + 1) / self._BUCKETS_PER_DECADE)
        return min(upper, self._max_ms)


class RateMeter:
    """Events per second of wall time at a given moment: the events of the last `window_s` seconds over the window,
    or, while less than a window has passed since the first event, the events since it over the time since.

    Dividing by the wall time, not by the span between the first and the last event, keeps frames that arrive
    together (a batch, the queue after a reconnect) from reading as thousands a second, and lets a stall decay to
    0; the window averages out the bursts. Until `warm_up_s` has passed since the first event there is no rate.
    """

    def __init__(self, window_s: float = 2.0, *, warm_up_s: float = 0.5) -> None:
        self._window_s = window_s
        self._warm_up_s = warm_up_s
        self._first_at: float | None = None
        self._times: deque[float] = deque()
        """The events after the first, within the window; the first only starts the clock."""

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._first_at is None:
            self._first_at = now
            return
        self._times.append(now)
        self._forget_until(now - self._window_s)

    def per_second(self, now: float | None = None) -> float | None:
        """The rate at `now` (default: this moment), or None before the warm-up has passed."""
        now = time.monotonic() if now is None else now
        if self._first_at is None or now - self._first_at < self._warm_up_s:
            return None
        self._forget_until(now - self._window_s)
        return len(self._times) / min(now - self._first_at, self._window_s)

    def _forget_until(self, moment: float) -> None:
        while self._times and self._times[0] <= moment:
            self._times.popleft()


STAGES = ("decode", "resize", "queued", "inference", "postprocess", "overlay", "sinks", "end to end")
"""Per-frame latencies, each measured by the one thread that runs that stage."""


@dataclass(slots=True)
class StreamStats:
    """One stream's counts and capture-to-output latency."""

    counters: StreamCounters = field(default_factory=StreamCounters)
    end_to_end: LatencyHistogram = field(default_factory=LatencyHistogram)
    lost_at: float | None = None
    """When the source was lost, while it is being reconnected."""


class RunStats:
    """The counts and per-stage latencies of a run, for its summary: an observer of its events."""

    def __init__(self) -> None:
        self.streams: dict[int, StreamStats] = {}
        self.latency: dict[str, LatencyHistogram] = {stage: LatencyHistogram() for stage in STAGES}
        self.started_at = time.monotonic()
        """When the model was ready and frames started to flow."""
        self.finished_at: float | None = None
        """When the run ended; None while running."""

    def stream(self, stream_id: int) -> StreamStats:
        """That stream's stats, empty until it has sent something."""
        stats = self.streams.get(stream_id)
        return stats if stats is not None else self.streams.setdefault(stream_id, StreamStats())

    @property
    def counters(self) -> StreamCounters:
        """All streams' counts added up (a copy: each stream's own are in `streams`)."""
        total = StreamCounters()
        for stream in list(self.streams.values()):
            for counter in dataclasses.fields(StreamCounters):
                name = counter.name
                setattr(total, name, getattr(total, name) + getattr(stream.counters, name))
        return total

    def notify(self, event: Event) -> None:
        """Counts the event; each counter is only ever changed by the one thread that sends its events."""
        match event:
            case FrameRead(stream_id=stream_id, decode_ms=decode_ms, resize_ms=resize_ms):
                self.stream(stream_id).counters.read += 1
                if decode_ms is not None and resize_ms is not None:
                    self.latency["decode"].add(decode_ms)
                    self.latency["resize"].add(resize_ms)
            case FramesDropped(stream_id=stream_id, count=count):
                self.stream(stream_id).counters.dropped += count
            case FramesUndecodable(stream_id=stream_id, count=count):
                self.stream(stream_id).counters.undecodable += count
            case SourceLost(stream_id=stream_id, at=at):
                self.stream(stream_id).lost_at = at
            case SourceBack(stream_id=stream_id, at=at):
                self._end_outage(stream_id, at)
                self.stream(stream_id).counters.reconnects += 1
            case StreamEnded(stream_id=stream_id, at=at):
                self._end_outage(stream_id, at)
            case FrameInferred():
                self.stream(event.stream_id).counters.inferred += 1
                self.latency["queued"].add(event.queued_ms)
                self.latency["inference"].add(event.inference_ms)
                self.latency["postprocess"].add(event.postprocess_ms)
            case FrameWritten():
                stream = self.stream(event.stream_id)
                stream.counters.written += 1
                stream.end_to_end.add(event.end_to_end_ms)
                self.latency["overlay"].add(event.overlay_ms)
                self.latency["sinks"].add(event.sinks_ms)
                self.latency["end to end"].add(event.end_to_end_ms)
            case ModelReady(at=at):
                self.started_at = at
            case RunEnded(at=at):
                self.finished_at = at

    def _end_outage(self, stream_id: int, at: float) -> None:
        stream = self.stream(stream_id)
        if stream.lost_at is not None:
            stream.counters.lost_s += at - stream.lost_at
            stream.lost_at = None
