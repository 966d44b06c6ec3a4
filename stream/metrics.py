"""Counters, frame-rate and latency meters; fixed memory however long the run."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class StreamCounters:
    """Each count has one writer thread: inferred and written the main thread, the others the capture thread."""

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
    """One stream's counts, frame rate and capture-to-output latency."""

    counters: StreamCounters = field(default_factory=StreamCounters)
    fps: RateMeter = field(default_factory=RateMeter)
    end_to_end: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(slots=True)
class RunStats:
    """What the console shows while running and the summary table at the end."""

    streams: dict[int, StreamStats] = field(default_factory=lambda: {0: StreamStats()})
    latency: dict[str, LatencyHistogram] = field(default_factory=lambda: {s: LatencyHistogram() for s in STAGES})
    fps: RateMeter = field(default_factory=RateMeter)
    """All streams together."""
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    """When the last frame was written; None while running."""

    @classmethod
    def for_streams(cls, stream_ids: list[int]) -> RunStats:
        return cls(streams={stream_id: StreamStats() for stream_id in stream_ids})

    @property
    def counters(self) -> StreamCounters:
        """All streams' counts added up (a copy: each stream's own are in `streams`)."""
        total = StreamCounters()
        for stream in self.streams.values():
            for counter in dataclasses.fields(StreamCounters):
                name = counter.name
                setattr(total, name, getattr(total, name) + getattr(stream.counters, name))
        return total
