"""Stable labels: the moving average of the scores, hysteresis on the top-1, class masks, and a real clip."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import read_video, require_asset, write_video

from stream.config import ModelConfig, Smoothing
from stream.engines import create_engine
from stream.recognizer import model_input
from stream.smoothing import Smoother
from stream.types import UsageError

A, B, C = 0, 1, 2

INSTANT = 1e-9
"""A half-life far below one frame: the average is the latest frame, so only the hysteresis acts."""


def run(smoother: Smoother, frames: list[list[float]], *, fps: float = 25.0) -> tuple[list[np.ndarray], list[int]]:
    """Feeds the frames at `fps`; the smoothed scores and the stable top-1 after each."""
    smoothed, stable = [], []
    for index, scores in enumerate(frames):
        average, top = smoother.update(np.array(scores), at_s=index / fps)
        smoothed.append(average)
        stable.append(top)
    return smoothed, stable


def changes(tops: list[int] | list[str]) -> int:
    return len(list(groupby(tops))) - 1


def test_average_and_hysteresis_follow_a_hand_computation() -> None:
    # given: a half-life of one frame, so each frame moves the average half-way to its scores
    smoother = Smoother(Smoothing(half_life=1, unit="frames", margin=0.1))
    frames = [[0.9, 0.1], [0.3, 0.7], [0.5, 0.5], [0.1, 0.9], [0.7, 0.3], [0.9, 0.1]]

    # when
    smoothed, stable = run(smoother, frames)

    # then: B overtakes clearly at frame 3; A's lead of 0.025 at frame 4 is inside the margin, its 0.4125 is not
    expected = [[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.325, 0.675], [0.5125, 0.4875], [0.70625, 0.29375]]
    assert [average.tolist() for average in smoothed] == [pytest.approx(row, abs=1e-12) for row in expected]
    assert stable == [A, A, A, B, B, A]


@pytest.mark.parametrize(
    ("margin", "expected"),
    [
        (0.1, [A, A, A, A, B, B, B, B]),
        (0.0, [A, B, A, B, B, A, B, A]),
    ],
)
def test_hysteresis_holds_the_top1_through_small_flips(margin: float, expected: list[int]) -> None:
    # given: B leads by 0.08 twice, then by 0.4; A then leads by 0.06 and 0.08
    frames = [
        [0.6, 0.4],
        [0.46, 0.54],
        [0.55, 0.45],
        [0.46, 0.54],
        [0.3, 0.7],
        [0.53, 0.47],
        [0.46, 0.54],
        [0.54, 0.46],
    ]
    smoother = Smoother(Smoothing(half_life=INSTANT, unit="frames", margin=margin))

    # when
    _, stable = run(smoother, frames)

    # then
    assert stable == expected


def test_noise_around_a_crossover_changes_the_label_once() -> None:
    # given: A fades from 0.75 to 0.25 while B rises, with +-0.1 of frame-to-frame noise
    frames = []
    for index in range(60):
        a = 0.75 - 0.5 * index / 59 + (0.1 if index % 2 else -0.1)
        frames.append([a, 1 - a])
    raw = Smoother(Smoothing(half_life=0))
    smooth = Smoother(Smoothing(half_life=3, unit="frames"))

    # when
    _, raw_tops = run(raw, frames)
    _, stable = run(smooth, frames)

    # then
    assert changes(raw_tops) >= 10
    assert changes(stable) == 1 and (stable[0], stable[-1]) == (A, B)


def test_half_life_in_seconds_matches_frames_at_a_steady_rate() -> None:
    # given: 10 frames/s, so 0.3 s is 3 frames
    frames = np.random.default_rng(0).dirichlet(np.ones(4), size=30).tolist()
    by_seconds = Smoother(Smoothing(half_life=0.3, unit="seconds"))
    by_frames = Smoother(Smoothing(half_life=3, unit="frames"))

    # when
    seconds_smoothed, seconds_stable = run(by_seconds, frames, fps=10)
    frames_smoothed, frames_stable = run(by_frames, frames, fps=10)

    # then
    np.testing.assert_allclose(seconds_smoothed, frames_smoothed, rtol=1e-9)
    assert seconds_stable == frames_stable


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        # two half-lives apart: the new frame weighs 3/4; at the same instant it weighs nothing
        ("seconds", [[1.0, 0.0], [0.25, 0.75], [0.25, 0.75]]),
        # in frames the times do not matter: every frame weighs 1/2
        ("frames", [[1.0, 0.0], [0.5, 0.5], [0.75, 0.25]]),
    ],
)
def test_weight_of_a_frame_follows_the_time_since_the_previous(unit: str, expected: list[list[float]]) -> None:
    # given
    smoother = Smoother(Smoothing(half_life=1, unit=unit))

    # when
    smoothed = [
        smoother.update(np.array(scores), at_s=at_s)[0].tolist()
        for scores, at_s in [([1.0, 0.0], 5.0), ([0.0, 1.0], 7.0), ([1.0, 0.0], 7.0)]
    ]

    # then
    assert smoothed == [pytest.approx(row) for row in expected]


def test_half_life_zero_passes_scores_through() -> None:
    # given: near ties that flip every frame
    smoother = Smoother(Smoothing(half_life=0))
    frames = [np.array([0.501, 0.499]), np.array([0.499, 0.501])] * 3

    # when
    results = [smoother.update(scores) for scores in frames]

    # then
    assert all(smoothed is scores for (smoothed, _), scores in zip(results, frames, strict=True))
    assert [top for _, top in results] == [A, B] * 3


@pytest.mark.parametrize("half_life", [0, 2])
def test_masked_class_is_never_the_stable_top1(half_life: float) -> None:
    # given: B always scores best, but the mask hides it
    mask = np.array([True, False, True])
    smoother = Smoother(Smoothing(half_life=half_life, unit="frames"), mask=mask)
    frames = [[0.2, 0.7, 0.1], [0.05, 0.6, 0.35], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]

    # when
    smoothed, stable = run(smoother, frames)

    # then: the mask picks the stable top-1, the scores stay whole
    assert B not in stable and stable[0] == A and stable[-1] == C
    assert smoothed[-1][B] == max(smoothed[-1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"half_life": -1.0}, r"smoothing\.half_life: must be a number >= 0"),
        ({"half_life": float("nan")}, r"smoothing\.half_life: must be a number >= 0"),
        ({"unit": "minutes"}, r"smoothing\.unit: must be one of frames, seconds"),
        ({"margin": 1.0}, r"smoothing\.margin: must be >= 0 and < 1"),
    ],
)
def test_invalid_smoothing_is_a_usage_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Smoothing(**options)


@pytest.mark.parametrize(
    ("smoothing", "mask", "updates", "message"),
    [
        (Smoothing(unit="seconds"), None, [([0.5, 0.5], None)], r"needs each frame's time \(at_s\)"),
        (Smoothing(unit="frames"), None, [([0.5, 0.5], None), ([0.2, 0.3, 0.5], None)], r"shape \(3,\).*\(2,\)"),
        (Smoothing(half_life=0), np.array([True, True]), [([0.2, 0.3, 0.5], 0.0)], r"shape \(3,\).*\(2,\)"),
        (Smoothing(), np.array([False, False]), [], "allows no class"),
    ],
)
def test_misuse_is_a_value_error(
    smoothing: Smoothing, mask: np.ndarray | None, updates: list[tuple[list[float], float | None]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        smoother = Smoother(smoothing, mask=mask)
        for scores, at_s in updates:
            smoother.update(np.array(scores), at_s=at_s)


def test_real_clip_keeps_the_label_through_flicker_and_follows_scene_changes(tmp_path: Path) -> None:
    # given: a 25 fps clip: a parrot for 1 s, 0.8 s flickering every two frames, a hot dog for 1 s, flicker, parrot
    parrot, hot_dog = (
        cv2.resize(cv2.imread(str(require_asset(f"images/{name}"))), (320, 240), interpolation=cv2.INTER_AREA)
        for name in ("parrot.jpg", "hot_dog.jpg")
    )
    script = [parrot] * 25 + [hot_dog, hot_dog, parrot, parrot] * 5 + [hot_dog] * 25
    script += [parrot, parrot, hot_dog, hot_dog] * 5 + [parrot] * 25
    frames, fps = read_video(write_video(tmp_path / "flicker.avi", script, fps=25))
    engine = create_engine(ModelConfig(model=str(require_asset("models/tflite/mobilenet_v2_1.0_224_quant.tflite"))))
    raw = Smoother(Smoothing(half_life=0))
    smooth = Smoother(Smoothing())  # the defaults: a half-life of 0.5 s, a margin of 0.1

    # when
    raw_tops, stable = [], []
    try:
        for index, image in enumerate(frames):
            scores = engine.infer(model_input(image, engine.input_size)[np.newaxis])[0]
            raw_tops.append(engine.classes.names[raw.update(scores)[1]])
            stable.append(engine.classes.names[smooth.update(scores, at_s=index / fps)[1]])
    finally:
        engine.close()

    # then: the raw label changes at every flicker, the stable one only in the long scenes
    assert len(frames) == len(script)
    assert changes(raw_tops) == 22
    assert [name for name, _ in groupby(stable)] == ["macaw", "hotdog", "macaw"]
    assert stable[45 + 24] == "hotdog" and stable[-1] == "macaw"
