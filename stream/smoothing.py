"""Smoothed labels: an exponential moving average of a stream's class scores, and hysteresis on its top-1."""

from __future__ import annotations

import numpy as np

from stream.config import Smoothing


class Smoother:
    """One stream's smoothed class scores and smoothed top-1; give it that stream's frames in order.

    Each frame moves the average towards its scores by `1 - 2 ** (-elapsed / half_life)`, where `elapsed` is one
    frame or the seconds since the previous frame. The smoothed top-1 starts as the first frame's best class and
    changes only when another class's smoothed score leads it by more than the margin. Not thread-safe: one
    stream, one owner.
    """

    def __init__(self, smoothing: Smoothing, *, mask: np.ndarray | None = None) -> None:
        """Starts with no history.

        Args:
            smoothing: The half-life and margin.
            mask: A boolean array over the classes (see `stream.labels.class_mask`); classes where it is False are
                never the smoothed top-1. None allows every class.

        Raises:
            ValueError: The mask allows no class.
        """
        if mask is not None and not mask.any():
            raise ValueError("the class mask allows no class")
        self._smoothing = smoothing
        self._mask = mask
        self._smoothed: np.ndarray | None = None
        self._previous_at_s = 0.0
        self._top = -1

    def update(self, scores: np.ndarray, *, at_s: float | None = None) -> tuple[np.ndarray, int]:
        """Adds one frame's scores.

        Args:
            scores: The frame's scores, shape (classes,).
            at_s: When the frame was taken, in seconds; needed when the unit is seconds, ignored for frames. For a
                video file pass its position in the source, so the smoothing does not depend on how fast frames
                are processed; for a live source, `Frame.captured_at`.

        Returns:
            The smoothed scores (read-only; `scores` itself when the half-life is 0), and the index of the smoothed
            top-1, never a class the mask hides.

        Raises:
            ValueError: `at_s` is missing in seconds, or `scores` has another shape than the mask or earlier frames.
        """
        expected = self._mask if self._smoothed is None else self._smoothed
        if expected is not None and scores.shape != expected.shape:
            raise ValueError(
                f"scores of shape {scores.shape}, but the class mask or earlier frames have {expected.shape}"
            )
        smoothing = self._smoothing
        if smoothing.half_life == 0:
            return scores, self._best(scores)
        seconds = smoothing.unit == "seconds"
        if seconds and at_s is None:
            raise ValueError("smoothing by a half-life in seconds needs each frame's time (at_s)")
        if self._smoothed is None:
            smoothed = scores.astype(np.float64)
            self._top = self._best(smoothed)
        else:
            # Equal or out-of-order times weigh nothing: a negative elapsed time would give a negative weight.
            elapsed = max(at_s - self._previous_at_s, 0.0) if seconds else 1.0
            weight = 1.0 - 0.5 ** (elapsed / smoothing.half_life)
            smoothed = self._smoothed + weight * (scores - self._smoothed)
            leader = self._best(smoothed)
            if smoothed[leader] - smoothed[self._top] > smoothing.margin:
                self._top = leader
        smoothed.setflags(write=False)
        self._smoothed = smoothed
        if seconds:
            self._previous_at_s = at_s
        return smoothed, self._top

    def _best(self, scores: np.ndarray) -> int:
        return int(np.argmax(scores if self._mask is None else np.where(self._mask, scores, -np.inf)))
