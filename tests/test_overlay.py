"""The overlay draws labels, bars, FPS and latency readably on any frame size."""

from __future__ import annotations

import numpy as np
import pytest

from stream.overlay import Annotator, draw_overlay
from stream.types import Frame, Label, Prediction


def prediction(*scores: float) -> Prediction:
    labels = tuple(Label(i, f"n{i:08d}", f"class_{i}", score) for i, score in enumerate(scores))
    return Prediction(0, 0, labels, inference_ms=12.0, queued_ms=3.0, batch_size=1)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (32, 24), (320, 240), (1280, 720), (7680, 4320)])
def test_draws_inside_the_frame_at_any_size(width: int, height: int) -> None:
    # given
    image = np.full((height, width, 3), 128, np.uint8)

    # when
    result = draw_overlay(image, prediction(0.9, 0.05), fps=29.97, latency_ms=41.0)

    # then it drew in place, in the top-left corner, and left the far corner alone on frames big enough
    assert result is image
    assert (image != 128).any()
    if width >= 320:
        assert (image[-height // 4 :, -width // 4 :] == 128).all()


def test_panel_grows_with_the_frame() -> None:
    small = np.full((240, 320, 3), 128, np.uint8)
    large = np.full((2160, 3840, 3), 128, np.uint8)
    draw_overlay(small, prediction(0.9), fps=30, latency_ms=10)
    draw_overlay(large, prediction(0.9), fps=30, latency_ms=10)
    small_rows = np.flatnonzero((small != 128).any(axis=(1, 2)))
    large_rows = np.flatnonzero((large != 128).any(axis=(1, 2)))
    assert large_rows.max() > 4 * small_rows.max()


def test_confidence_bar_length_follows_the_score() -> None:
    # given two frames that differ only in the top score
    low, high = (np.zeros((720, 1280, 3), np.uint8) for _ in range(2))
    draw_overlay(low, prediction(0.2), fps=30, latency_ms=10)
    draw_overlay(high, prediction(0.8), fps=30, latency_ms=10)

    # then the green bar is about four times longer
    def green_pixels(image: np.ndarray) -> int:
        return int(((image[..., 1] > 150) & (image[..., 0] < 120) & (image[..., 2] < 120)).sum())

    assert green_pixels(high) / green_pixels(low) == pytest.approx(4.0, rel=0.15)


def test_no_labels_still_shows_fps() -> None:
    # given a prediction without labels, drawn with a rate and before there is one
    measured, unmeasured = (np.zeros((240, 320, 3), np.uint8) for _ in range(2))
    draw_overlay(measured, prediction(), fps=30, latency_ms=10)
    draw_overlay(unmeasured, prediction(), fps=None, latency_ms=10)

    # then the header is drawn, and the rate widens it
    assert unmeasured.any()
    assert header_width(measured) > header_width(unmeasured)


def test_without_a_rate_the_header_leaves_the_fps_out() -> None:
    # given the same frame drawn with a rate and before there is one
    measured, unmeasured = (np.zeros((240, 320, 3), np.uint8) for _ in range(2))
    draw_overlay(measured, prediction(0.9), fps=30, latency_ms=10)
    draw_overlay(unmeasured, prediction(0.9), fps=None, latency_ms=10)

    # then the header, the widest line, is shorter by the FPS
    assert header_width(unmeasured) < header_width(measured)


def header_width(image: np.ndarray) -> int:
    """How far right the first line of text reaches."""
    return int(np.flatnonzero(image[:20].any(axis=(0, 2))).max())


@pytest.mark.parametrize("copy", [True, False])
def test_the_drawing_stage_draws_on_a_copy_when_asked_and_on_the_frame_otherwise(copy: bool) -> None:
    # given a frame
    image = np.full((240, 320, 3), 128, np.uint8)
    frame = Frame(0, 0, image, np.zeros((8, 8, 3), np.uint8), captured_at=0.0)

    # when
    shown = Annotator({}, copy=copy).annotate(frame, prediction(0.9), now=0.04)

    # then the frame shown carries the overlay, on a copy that leaves the captured pixels alone when asked
    assert (shown.image != 128).any()
    assert (shown.image is image) is not copy
    assert bool((frame.image == 128).all()) is copy
    assert (shown.index, shown.stream_id) == (frame.index, frame.stream_id)
