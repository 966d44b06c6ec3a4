"""The window sink on a real (virtual) X display: it opens, shows the annotated frames, and closes at the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import cv2
import numpy as np
import pytest
from helpers import FakeEngine, ScriptedReader, limits

from stream.metrics import RunStats
from stream.pipeline import Pipeline
from stream.queues import StopFlag
from stream.sinks import WindowSink
from stream.types import Frame, Prediction

TITLE = "mnstream window test"


def best_match(screen: np.ndarray, image: np.ndarray) -> float:
    return float(cv2.matchTemplate(screen, image, cv2.TM_CCOEFF_NORMED).max())


def grab_showing(display: str, images: list[np.ndarray], *, timeout_s: float = 3.0) -> np.ndarray:
    """The screen once every image is on it, or when the time is up: on a loaded machine a new window takes
    longer to map and paint than any fixed pause."""
    from PIL import ImageGrab

    deadline = time.monotonic() + timeout_s
    while True:
        cv2.waitKey(20)  # the window paints only while its events are pumped
        screen = cv2.cvtColor(np.asarray(ImageGrab.grab(xdisplay=display)), cv2.COLOR_RGB2BGR)
        if min(best_match(screen, image) for image in images) > 0.9 or time.monotonic() > deadline:
            return screen


Spy = TypeVar("Spy", "ScreenSpy", "LastFrames")


def run_until_painted(run: Callable[[], Spy], *, attempts: int = 5) -> Spy:
    """Runs again in a fresh window while the screen stays entirely unpainted.

    Without a window manager, on a busy machine, Qt's X11 backend sometimes misses a new window's map event and
    never paints it, whatever is shown (reproduced here with a bare namedWindow/imshow in about one run in four
    under full CPU load; opencv/opencv-python#362). A window that paints anything else still fails the test.
    """
    for _ in range(attempts - 1):
        spy = run()
        if spy.screen is None or spy.screen.any():
            return spy
    return run()


class ScreenSpy:
    """Runs after the window sink: notes whether the window is up and grabs the screen once."""

    needs_overlay = False

    def __init__(self, display: str, *, grab_at: int) -> None:
        self._display = display
        self._grab_at = grab_at
        self.visible: list[float] = []
        self.shown: np.ndarray | None = None
        self.screen: np.ndarray | None = None
        self.written = 0

    def write(self, frame: Frame, prediction: Prediction, stats: RunStats) -> None:
        self.visible.append(cv2.getWindowProperty(TITLE, cv2.WND_PROP_VISIBLE))
        if frame.index == self._grab_at:
            self.shown = frame.image.copy()
            self.screen = grab_showing(self._display, [self.shown])

    def close(self) -> None:
        pass


def window_exists() -> bool:
    try:
        return cv2.getWindowProperty(TITLE, cv2.WND_PROP_VISIBLE) >= 1
    except cv2.error:
        return False


def test_window_shows_annotated_frames_and_closes_at_end_of_stream(display: str) -> None:
    pytest.importorskip("PIL.ImageGrab")

    # given
    def run() -> ScreenSpy:
        spy = ScreenSpy(display, grab_at=10)
        stop = StopFlag()
        window = WindowSink(TITLE, stop=stop)
        pipeline = Pipeline([ScriptedReader(20)], FakeEngine, [window, spy], limits=limits(batch_size=4), stop=stop)
        spy.written = pipeline.run().counters.written
        return spy

    # when the scripted source ends
    spy = run_until_painted(run)

    # then the window was up for every frame, and what the screen showed is the annotated frame
    assert spy.written == 20
    assert len(spy.visible) == 20 and min(spy.visible) >= 1
    assert spy.shown is not None and spy.screen is not None
    match = best_match(spy.screen, spy.shown)
    assert match > 0.9, f"the annotated frame is not on the screen (best match {match:.2f})"
    assert (spy.shown[:40, :100] != ScriptedReader(1).read()[0][:40, :100]).any(), "no overlay was drawn"
    # and it is gone once the run is over
    assert not window_exists()


class LastFrames:
    """Runs after the grid window: keeps each stream's last annotated frame and grabs the screen at the end."""

    needs_overlay = False

    def __init__(self, display: str, *, grab_after: int) -> None:
        self._display = display
        self._grab_after = grab_after
        self._count = 0
        self.last: dict[int, np.ndarray] = {}
        self.screen: np.ndarray | None = None

    def write(self, frame: Frame, prediction: Prediction, stats: RunStats) -> None:
        self.last[frame.stream_id] = frame.image.copy()
        self._count += 1
        if self._count == self._grab_after:
            self.screen = grab_showing(self._display, list(self.last.values()))

    def close(self) -> None:
        pass


def test_one_window_shows_every_stream_in_a_grid(display: str) -> None:
    pytest.importorskip("PIL.ImageGrab")

    # given two streams of the same length, shown in one window
    def run() -> LastFrames:
        stop = StopFlag()
        spy = LastFrames(display, grab_after=20)
        window = WindowSink(TITLE, stop=stop, streams=2)
        readers = [ScriptedReader(10, stream_id=0), ScriptedReader(10, stream_id=1)]
        Pipeline(readers, FakeEngine, [window, spy], limits=limits(batch_size=2), stop=stop).run()
        return spy

    # when
    spy = run_until_painted(run)

    # then the screen shows both streams' last annotated frames side by side
    assert spy.screen is not None and set(spy.last) == {0, 1}
    matches = [best_match(spy.screen, spy.last[s]) for s in (0, 1)]
    assert min(matches) > 0.9, matches
    left, right = (cv2.minMaxLoc(cv2.matchTemplate(spy.screen, spy.last[s], cv2.TM_CCOEFF_NORMED))[3] for s in (0, 1))
    assert right[0] > left[0], "stream 1 is the second tile of the row"
    assert not window_exists()
