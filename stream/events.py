"""What happens in a run, as small frozen events, and the observers that watch it.

Stages announce what they did; whoever wants to watch (the run's stats, a benchmark, a user's dashboard)
subscribes. Events come from the thread that did the work (a capture thread, the inference worker, the main
thread), so an observer must be quick and must not share state across those threads without a lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from stream.types import Label, Prediction


@dataclass(frozen=True, slots=True)
class ModelReady:
    """The model has loaded and warmed up; frames start to flow."""

    at: float


@dataclass(frozen=True, slots=True)
class FrameRead:
    """A capture thread read a frame; the times are None for a frame dropped before the model was ready."""

    stream_id: int
    index: int
    at: float
    decode_ms: float | None = None
    resize_ms: float | None = None


@dataclass(frozen=True, slots=True)
class FramesDropped:
    """A live source dropped frames: its oldest queued ones, or what it read while the model loaded."""

    stream_id: int
    count: int


@dataclass(frozen=True, slots=True)
class FramesUndecodable:
    """A source sent frames that could not be decoded; they were skipped."""

    stream_id: int
    count: int


@dataclass(frozen=True, slots=True)
class SourceLost:
    """A live source stopped delivering; it is being reconnected."""

    stream_id: int
    at: float


@dataclass(frozen=True, slots=True)
class SourceBack:
    """A lost source delivers again after `lost_s` seconds."""

    stream_id: int
    at: float
    lost_s: float


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """A capture thread has finished: its source ended, did not come back, or the run stopped."""

    stream_id: int
    at: float


@dataclass(frozen=True, slots=True)
class FrameInferred:
    """The model has scored a frame."""

    stream_id: int
    index: int
    at: float
    queued_ms: float
    inference_ms: float
    postprocess_ms: float
    batch_size: int


@dataclass(frozen=True, slots=True)
class FrameWritten:
    """A frame has reached every sink."""

    stream_id: int
    index: int
    at: float
    overlay_ms: float
    sinks_ms: float
    end_to_end_ms: float


@dataclass(frozen=True, slots=True)
class LabelChanged:
    """A stream's shown label (the smoothed top-1, `Prediction.smoothed`) changed, or was shown for the first time;
    told before the frame reaches the caller's own sink.
    """

    stream_id: int
    frame_index: int
    at: float
    label: Label | None
    """The label shown from this frame on; None when no class clears the threshold."""


@dataclass(frozen=True, slots=True)
class StageError:
    """A stage failed; the first failure of a run decides how it ends."""

    stage: str
    error: str


@dataclass(frozen=True, slots=True)
class RunEnded:
    """The last frame has been written, or the run stopped."""

    at: float


Event = (
    ModelReady
    | FrameRead
    | FramesDropped
    | FramesUndecodable
    | SourceLost
    | SourceBack
    | StreamEnded
    | FrameInferred
    | FrameWritten
    | LabelChanged
    | StageError
    | RunEnded
)


class ShownLabels:
    """Each stream's shown label, to tell the frames where it changes (each stream's first frame included)."""

    def __init__(self) -> None:
        self._shown: dict[int, int | None] = {}

    def changed(self, prediction: Prediction) -> bool:
        """Whether this prediction shows another label than its stream's previous one; remembers it."""
        shown = None if prediction.smoothed is None else prediction.smoothed.class_index
        stream_id = prediction.stream_id
        if stream_id in self._shown and self._shown[stream_id] == shown:
            return False
        self._shown[stream_id] = shown
        return True


class Observer(Protocol):
    """Watches a run: called with each event, on the thread that caused it."""

    def notify(self, event: Event) -> None: ...


class NullObserver:
    """Watches nothing: the default, so that stages need not ask whether anyone listens."""

    def notify(self, event: Event) -> None:
        pass


NULL_OBSERVER = NullObserver()


class Observers:
    """Several observers as one, each told every event in the order given."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self._observers = tuple(observers)

    def notify(self, event: Event) -> None:
        for observer in self._observers:
            observer.notify(event)
