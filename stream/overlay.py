"""Draws the top labels with confidence bars, the FPS and the latency onto a frame."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import NamedTuple

import cv2
import numpy as np

from stream.metrics import RateMeter
from stream.types import Frame, Prediction

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT = (255, 255, 255)
_BAR = (80, 200, 80)
_BAR_BACK = (70, 70, 70)
_STABLE = (40, 220, 255)
_PANEL_OPACITY = 0.55
_BAR_CHARS = 6
"""The bar is as wide as this many capital letters of text."""


class _Layout(NamedTuple):
    """The overlay's sizes for one frame size, scaled with it so the text stays readable from a thumbnail to 4K."""

    scale: float
    thickness: int
    text_height: int
    line: int
    margin: int
    bar_width: int


@functools.lru_cache(maxsize=16)
def _layout(width: int, height: int) -> _Layout:
    # Worked out once per frame size, not every frame: they depend on nothing else.
    scale = min(max(min(width, height) / 720, 0.3), 3.0)
    thickness = max(1, round(2 * scale))
    (_, text_height), baseline = cv2.getTextSize("Ag", _FONT, scale, thickness)
    line = text_height + baseline + max(2, round(8 * scale))
    margin = max(2, round(10 * scale))
    bar_width = cv2.getTextSize("M" * _BAR_CHARS, _FONT, scale, thickness)[0][0]
    return _Layout(scale, thickness, text_height, line, margin, bar_width)


def draw_overlay(
    image: np.ndarray, prediction: Prediction, *, fps: float | None, latency_ms: float, title: str | None = None
) -> np.ndarray:
    """Draws on `image`, which the caller owns, and returns it; `fps` is left out while None (not measured yet),
    `latency_ms` is from capture to now, `title` names the stream.
    """
    height, width = image.shape[:2]
    scale, thickness, text_height, line, margin, bar_width = _layout(width, height)

    rate = "" if fps is None else f"{fps:.1f} FPS  "
    header = f"{rate}inference {prediction.inference_ms:.0f} ms  latency {latency_ms:.0f} ms"
    if title:
        header = f"{title}  {header}"
    # The smoothed top-1 leads, as the answer; the bars below are this frame's own scores.
    smoothed = prediction.smoothed
    headline = [f"{smoothed.name.replace('_', ' ')} {smoothed.score:.2f}"] if smoothed else []
    rows = [f"{label.name.replace('_', ' ')} {label.score:.2f}" for label in prediction.labels]
    text_width = max(cv2.getTextSize(text, _FONT, scale, thickness)[0][0] for text in [header, *headline, *rows])
    panel_right = min(width, 2 * margin + bar_width + margin + text_width)
    panel_bottom = min(height, margin + line * (1 + len(headline) + len(rows)) + margin)
    panel = image[:panel_bottom, :panel_right]
    # Black at this opacity over the picture is the picture scaled down, in place.
    cv2.convertScaleAbs(panel, dst=panel, alpha=1 - _PANEL_OPACITY)

    y = margin + text_height
    cv2.putText(image, header, (margin, y), _FONT, scale, _TEXT, thickness, cv2.LINE_AA)
    for text in headline:
        y += line
        cv2.putText(image, text, (margin, y), _FONT, scale, _STABLE, thickness + 1, cv2.LINE_AA)
    for label, text in zip(prediction.labels, rows, strict=True):
        y += line
        top = y - text_height
        cv2.rectangle(image, (margin, top), (margin + bar_width, y), _BAR_BACK, cv2.FILLED)
        cv2.rectangle(image, (margin, top), (margin + round(bar_width * label.score), y), _BAR, cv2.FILLED)
        cv2.putText(image, text, (2 * margin + bar_width, y), _FONT, scale, _TEXT, thickness, cv2.LINE_AA)
    return image


class Annotator:
    """The drawing stage: each frame with its prediction, its stream's frame rate and its latency drawn on it.

    It draws on a copy while something else reads the captured image (a callback of the Python API), so that no
    one sees pixels change under them; otherwise on the captured image itself, which nothing else reads: a frame
    copied is 0.16 ms of the 2.2 the drawing thread spends on it with a video written (benchmarks/RESULTS.md).
    """

    def __init__(self, titles: Mapping[int, str], *, copy: bool) -> None:
        """Starts with no frame drawn.

        Args:
            titles: Stream id -> the name drawn in its header; empty to name none (a run of one stream).
            copy: Whether to draw on a copy, leaving the captured image as it was.
        """
        self._titles = titles
        self._copy = copy
        self._rates: dict[int, RateMeter] = {}

    def annotate(self, frame: Frame, prediction: Prediction, *, now: float) -> Frame:
        """The frame as sinks show it, its rate and latency taken at `now`."""
        rate = self._rates.setdefault(frame.stream_id, RateMeter())
        rate.tick(now)
        latency_ms = (now - frame.captured_at) * 1000
        title = self._titles.get(frame.stream_id)
        fps = rate.per_second(now)
        if not self._copy:
            draw_overlay(frame.image, prediction, fps=fps, latency_ms=latency_ms, title=title)
            return frame
        image = draw_overlay(frame.image.copy(), prediction, fps=fps, latency_ms=latency_ms, title=title)
        return dataclasses.replace(frame, image=image)
