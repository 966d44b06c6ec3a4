"""Recognition without threads: a batch of frames in, their predictions out."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from stream.config import Config, Smoothing
from stream.engines import Engine, create_engine
from stream.labels import ClassNames, class_mask, top_labels
from stream.smoothing import Smoother
from stream.types import Frame, Label, Prediction


def model_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The whole frame, resized (no crop) to the model's (width, height), as RGB uint8.

    Halved by INTER_AREA while it is at least twice the size, then bilinear for the rest: the averaging keeps the
    anti-aliasing of INTER_AREA, and halving is its vectorised path, a quarter of the cost of one step by a whole
    factor of 3 or 5 (0.34 against 1.43 ms a 720p frame), with the same top-1 on every reliable photo
    (benchmarks/RESULTS.md).
    """
    width, height = size
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        rows, columns = image.shape[:2]
        # An odd last row or column is left out: it would put INTER_AREA on its slow path for fractional factors.
        even = image[: rows - rows % 2, : columns - columns % 2]
        image = cv2.resize(even, (columns // 2, rows // 2), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)


@dataclass(frozen=True, slots=True)
class Scored:
    """One model call's output, before labels and smoothing."""

    scores: np.ndarray
    """(frames, classes) probabilities."""
    started_at: float
    """When the call began (`time.monotonic()`)."""
    inference_ms: float


class Recognizer:
    """Turns frames into predictions: the engine, the model's input size, class names, the allow/deny mask, top-k,
    threshold and each stream's smoothing.

    It starts no thread and holds no lock. `recognize` is its two steps in one: `score`, the model call, which
    several threads may make at once (the pipeline keeps two batches in the model), and `predict`, which carries
    each stream's smoothing and so takes batches one at a time, in order. `prepare` may run on any thread (the
    capture threads resize their frames in parallel with inference).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        top_k: int = 5,
        threshold: float = 0.0,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        smoothing: Smoothing | None = None,
        still_streams: Collection[int] = (),
    ) -> None:
        """Takes ownership of a loaded engine; `close` closes it.

        Args:
            engine: The model; the seam where another engine (a remote one) plugs in.
            top_k: Labels per prediction at most.
            threshold: The lowest score listed or shown.
            allow: The only classes to show (names or ids).
            deny: Classes never to show.
            smoothing: How each stream's shown label is smoothed; the defaults when None.
            still_streams: Streams of still images, which are never smoothed.

        Raises:
            UsageError: `allow` or `deny` names no class of the model.
        """
        self.engine = engine
        self._top_k = top_k
        self._threshold = threshold
        self._mask = class_mask(engine.classes, allow=allow, deny=deny)
        self._smoothing = smoothing or Smoothing()
        self._still_streams = frozenset(still_streams)
        self._smoothers: dict[int, Smoother] = {}

    @classmethod
    def from_config(cls, config: Config, *, still_streams: Collection[int] = ()) -> Recognizer:
        """Loads the model `config.model` names, with the run's top-k, threshold, class filter and smoothing.

        Raises:
            ModelError: The model, its weights or its labels cannot be used.
            UsageError: --allow or --deny names no class of the model.
        """
        engine = create_engine(config.model)
        try:
            return cls.around(engine, config, still_streams=still_streams)
        except BaseException:
            engine.close()
            raise

    @classmethod
    def around(cls, engine: Engine, config: Config, *, still_streams: Collection[int] = ()) -> Recognizer:
        """A loaded engine, with the run's top-k, threshold, class filter and smoothing.

        Raises:
            UsageError: --allow or --deny names no class of the model.
        """
        model = config.model
        return cls(
            engine,
            top_k=model.top_k,
            threshold=model.threshold,
            allow=model.allow,
            deny=model.deny,
            smoothing=config.smoothing,
            still_streams=still_streams,
        )

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's (width, height)."""
        return self.engine.input_size

    @property
    def classes(self) -> ClassNames:
        return self.engine.classes

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A decoded BGR frame as the model takes it (`Frame.model_input`); safe on any thread."""
        return model_input(image, self.engine.input_size)

    def warm_up(self) -> None:
        """One call on a black frame, so the first real batch does not pay for allocation and compiling."""
        width, height = self.engine.input_size
        self.engine.infer(np.zeros((1, height, width, 3), np.uint8))

    def recognize(self, frames: Sequence[Frame]) -> list[Prediction]:
        """One model call for the frames (each with its `model_input`); their predictions, in order.

        A stream's frames must come in order across calls: its smoothing carries from one frame to the next.
        """
        return self.predict(frames, self.score(frames))

    def score(self, frames: Sequence[Frame]) -> Scored:
        """One model call for the frames (each with its `model_input`); safe on several threads at once."""
        started_at = time.monotonic()
        scores = self.engine.infer(np.stack([frame.model_input for frame in frames]))
        return Scored(scores, started_at, (time.monotonic() - started_at) * 1000)

    def predict(self, frames: Sequence[Frame], scored: Scored) -> list[Prediction]:
        """The frames' predictions from their scores: top-k, threshold and smoothing.

        A stream's frames must come in order across calls: its smoothing carries from one frame to the next.
        """
        predictions = []
        for frame, frame_scores in zip(frames, scored.scores, strict=True):
            labels = self.labels(frame_scores)
            queued_ms = (scored.started_at - frame.captured_at) * 1000
            smoothed = self._smoothed(frame, frame_scores, labels)
            predictions.append(
                Prediction(frame.stream_id, frame.index, labels, scored.inference_ms, queued_ms, len(frames), smoothed)
            )
        return predictions

    def labels(self, scores: np.ndarray) -> tuple[Label, ...]:
        """One frame's top-k labels above the threshold, among the classes shown, highest first."""
        return top_labels(scores, self.classes, top_k=self._top_k, threshold=self._threshold, mask=self._mask)

    def close(self) -> None:
        self.engine.close()

    def _smoothed(self, frame: Frame, scores: np.ndarray, labels: tuple[Label, ...]) -> Label | None:
        if frame.stream_id in self._still_streams:
            return labels[0] if labels else None
        smoother = self._smoothers.get(frame.stream_id)
        if smoother is None:
            smoother = self._smoothers[frame.stream_id] = Smoother(self._smoothing, mask=self._mask)
        # A file's frames are timed by their place in it, so a file is as smooth however fast it is processed.
        at_s = frame.captured_at if frame.position_s is None else frame.position_s
        smoothed, index = smoother.update(scores, at_s=at_s)
        score = float(smoothed[index])
        if score < self._threshold:
            return None
        return Label(index, self.classes.ids[index], self.classes.names[index], score)
