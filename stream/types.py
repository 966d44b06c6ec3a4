"""The data that crosses threads, and the base errors the CLI maps to exit codes (numpy only)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class MnstreamError(Exception):
    """A failure worth a one-line message and exit code 1."""

    exit_code = 1


class UsageError(MnstreamError):
    """Bad input from the user: a flag, a path, a config key. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A config key that does not exist, or a value of the wrong type or range."""

    def __init__(self, message: str, *, key: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        """The key whose value broke `rule`, where one key did."""
        self.rule = rule

    def naming(self, name: str) -> ConfigError:
        """The same error, naming the key as the user gave it (a command-line flag)."""
        return ConfigError(f"{name}: {self.rule}", key=self.key, rule=self.rule)


class SourceError(UsageError):
    """A camera, file or URL that cannot be opened."""


class ModelError(UsageError):
    """A model, weights or labels file that cannot be used."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (native errors run to many), or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class SourceKind(enum.Enum):
    """What a source is: a camera, a stream URL, a video file or still images."""

    CAMERA = "camera"
    URL = "url"
    VIDEO_FILE = "video file"
    IMAGES = "images"

    @property
    def is_live(self) -> bool:
        return self in (SourceKind.CAMERA, SourceKind.URL)


class DropPolicy(enum.Enum):
    """What the capture thread does when the inference queue is full."""

    DROP_OLDEST = "drop oldest"
    """Live sources: keep the picture fresh, count what was skipped."""
    WAIT = "wait"
    """Files and images: never lose a frame, slow the reader down instead."""

    @classmethod
    def for_source(cls, kind: SourceKind) -> DropPolicy:
        return cls.DROP_OLDEST if kind.is_live else cls.WAIT


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a reader knows about its source once it is open."""

    stream_id: int
    name: str
    kind: SourceKind
    width: int
    height: int
    fps: float | None
    """Nominal frames per second; None where the source does not say (cameras often lie, images have none)."""
    frame_count: int | None = None

    @property
    def drop_policy(self) -> DropPolicy:
        return DropPolicy.for_source(self.kind)

    @property
    def timeline_fps(self) -> float | None:
        """A file's own nominal FPS. None for live sources, whose nominal FPS says nothing of when their frames
        come.
        """
        return None if self.kind.is_live else self.fps


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame, with the model-sized copy prepared on the capture thread."""

    stream_id: int
    index: int
    image: np.ndarray | None = field(repr=False)
    """BGR uint8, as OpenCV decoded it; None in a run where no sink reads images (headless, JSON lines), which lets
    it go once the model's copy is made: a run holds dozens of frames in flight, 6 MB each at 1080p."""
    model_input: np.ndarray = field(repr=False)
    """RGB uint8 at the model's input size."""
    captured_at: float
    """time.monotonic() when the reader returned the frame."""
    origin: str = ""
    """Where the frame came from when a source has many files (image folders); empty otherwise."""
    position_s: float | None = None
    """The frame's own timestamp in its file, in seconds; None for live sources and still images. A file of variable
    frame rate has its frames at irregular times, so this is no index / fps."""

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"frame index must be >= 0, got {self.index}")
        if self.image is not None and (
            self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3
        ):
            raise ValueError(f"frame image must be HxWx3 uint8, got {self.image.shape} {self.image.dtype}")


@dataclass(frozen=True, slots=True)
class Label:
    """One class and its score."""

    class_index: int
    class_id: str
    """WordNet id for ImageNet models, the label itself for a user's labels file."""
    name: str
    score: float

    def as_tuple(self) -> tuple[str, str, float]:
        """The `decode_predictions` shape: (class id, name, score)."""
        return (self.class_id, self.name, round(self.score, 3))


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the model made of one frame: its top labels, the smoothed top-1 and how long it took."""

    stream_id: int
    frame_index: int
    labels: tuple[Label, ...]
    """Top-k above the threshold, highest score first."""
    inference_ms: float
    """The whole batch's model call; every frame of the batch waited that long."""
    queued_ms: float
    """From capture until the batch holding this frame went into the model."""
    batch_size: int
    smoothed: Label | None = None
    """The top-1 after temporal smoothing and hysteresis: what to show and act on. Without smoothing, the first
    of `labels`."""

    def __post_init__(self) -> None:
        scores = [label.score for label in self.labels]
        if scores != sorted(scores, reverse=True):
            raise ValueError("prediction labels must be sorted by score, highest first")
