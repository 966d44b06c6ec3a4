"""What one benchmark row measured: the record each child process prints as one JSON line."""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any

from stream.config import ModelConfig

ROWS = ("ceiling", "float16", "int8", "tensorflow", "baseline", "headless", "video", "cold", "mediapipe", "live")
"""Every row, in the order they run and are shown."""

QUANTIZED_ROWS = ("float16", "int8")
"""The engine ceiling again, for the same Keras model exported with these weights, beside its float32 ceiling."""

TITLES = {
    "ceiling": "engine ceiling",
    "float16": "float16 ceiling",
    "int8": "int8 ceiling",
    "tensorflow": "TensorFlow kernels headless",
    "baseline": "seed baseline",
    "headless": "pipeline headless",
    "video": "pipeline + video",
    "cold": "headless, empty cache",
    "mediapipe": "MediaPipe",
    "live": "pipeline live",
}

STAGES = ("decode", "preprocess", "queue", "inference", "postprocess", "overlay", "sinks", "end to end")
"""Per-frame stage means every row reports where it has them; `inference` is per model call (a batch)."""


class RowStatus(enum.StrEnum):
    """Whether a row was measured, skipped with a reason, or failed."""

    OK = "ok"
    SKIPPED = "skipped"
    """The row does not apply (a Keras-only row for a .tflite model) or its extra is not installed."""
    FAILED = "failed"


class ModelFormat(enum.StrEnum):
    """Which targets apply: a Keras model on TensorFlow's kernels, compiled to LiteRT, or a .tflite (int8)."""

    KERAS = "keras"
    COMPILED = "keras on litert"
    TFLITE = "tflite"

    @classmethod
    def of(cls, model: ModelConfig) -> ModelFormat:
        if model.is_tflite:
            return cls.TFLITE
        return cls.KERAS if model.runtime == "tensorflow" else cls.COMPILED


def finite(value: float | None) -> float | None:
    """None for NaN (an empty histogram's mean), which JSON cannot hold."""
    return None if value is None or math.isnan(value) else float(value)


@dataclass(frozen=True, slots=True)
class LiveResult:
    """Capture-to-display latency of a video replayed at a camera's pace."""

    fps: float
    duration_s: float
    frames_read: int
    frames_shown: int
    dropped: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_max_ms: float | None
    first_third_p95_ms: float | None
    last_third_p95_ms: float | None
    inference_mean_ms: float | None
    """One model call (a batch), as the pipeline measured it during the live run."""
    inference_p95_ms: float | None

    @property
    def bound_ms(self) -> float | None:
        """The target for p95 latency: one batch inference (its p95) plus two frame intervals."""
        if self.inference_p95_ms is None:
            return None
        return self.inference_p95_ms + 2 * self.interval_ms

    @property
    def interval_ms(self) -> float:
        return 1000 / self.fps

    @property
    def growth_ms(self) -> float | None:
        """How much the p95 latency of the last third of the run exceeds the first third's."""
        if self.first_third_p95_ms is None or self.last_third_p95_ms is None:
            return None
        return self.last_third_p95_ms - self.first_third_p95_ms


@dataclass(frozen=True, slots=True)
class RowResult:
    """One row of the benchmark; times in seconds since the parent spawned the row's process."""

    row: str
    status: RowStatus
    reason: str = ""
    """Why a row was skipped or failed."""
    frames: int = 0
    frames_per_s: float | None = None
    """Steady throughput, after the model has loaded."""
    wall_s: float | None = None
    """Everything: interpreter start, imports, model load and the frames."""
    first_frame_s: float | None = None
    """Until the first annotated (or classified) frame; None where the row has no such moment (the ceiling)."""
    peak_rss_mb: float | None = None
    batch_size: int | None = None
    tensorflow_imported: bool | None = None
    top1_agreement: float | None = None
    """For a quantized ceiling: the share of frames whose top-1 is the float32 model's."""
    stage_ms: dict[str, float | None] = field(default_factory=dict)
    layouts_fps: dict[str, float] = field(default_factory=dict)
    """For a ceiling on LiteRT: frames/s of the engine and of LiteRT alone in each thread layout; the row's
    frames/s is the fastest of them."""
    live: LiveResult | None = None
    frames_per_s_runs: list[float] = field(default_factory=list)
    """Every repeat's throughput, when the row was run more than once; the row's numbers are the median run's."""

    @property
    def ok(self) -> bool:
        return self.status is RowStatus.OK

    def to_dict(self) -> dict[str, Any]:
        """Every field, and the live run's bound and growth, as JSON-ready values."""
        document = dataclasses.asdict(self)
        if self.live is not None:
            document["live"].update(bound_ms=self.live.bound_ms, growth_ms=self.live.growth_ms)
        return document

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> RowResult:
        """The inverse of `to_dict`, for the line a child process printed."""
        values = dict(document)
        values["status"] = RowStatus(values["status"])
        live = values.get("live")
        if live is not None:
            names = {f.name for f in dataclasses.fields(LiveResult)}
            values["live"] = LiveResult(**{key: value for key, value in live.items() if key in names})
        return cls(**values)


def skipped(row: str, reason: str) -> RowResult:
    """A row that does not apply to this model or machine, and why."""
    return RowResult(row, RowStatus.SKIPPED, reason)


def failed(row: str, reason: str) -> RowResult:
    """A row whose process failed, with its last error line."""
    return RowResult(row, RowStatus.FAILED, reason)


def median_run(runs: list[RowResult]) -> RowResult:
    """The run with the median throughput, carrying every run's throughput; the first run if none measured it.

    Taking one whole run, rather than a median per column, keeps a row's numbers from the same process.
    """
    measured = sorted((run for run in runs if run.ok and run.frames_per_s), key=lambda run: run.frames_per_s)
    if not measured:
        return runs[0]
    middle = measured[(len(measured) - 1) // 2]
    return dataclasses.replace(middle, frames_per_s_runs=[run.frames_per_s for run in measured])
