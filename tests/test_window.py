"""The window sink on a real (virtual) X display: it opens, shows the annotated frames, and closes at the end."""

from __future__ import annotations

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


class ScreenSpy:
    """Runs after the window sink: notes whether the window is up and grabs the screen once."""

    needs_overlay = False

    def __init__(self, display: str, *, grab_at: int) -> None:
        self._display = display
        self._grab_at = grab_at
        self.visible: list[float] = []
        self.shown: np.ndarray | None = None
        self.screen: np.ndarray | None = None

    def write(self, frame: Frame, prediction: Prediction, stats: RunStats) -> None:
        from PIL import ImageGrab

        self.visible.append(cv2.getWindowProperty(TITLE, cv2.WND_PROP_VISIBLE))
        if frame.index == self._grab_at:
            cv2.waitKey(50)  # let the window system paint before the grab
            self.shown = frame.image.copy()
            self.screen = cv2.cvtColor(np.asarray(ImageGrab.grab(xdisplay=self._display)), cv2.COLOR_RGB2BGR)

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
    spy = ScreenSpy(display, grab_at=10)
    stop = StopFlag()
    window = WindowSink(TITLE, stop=stop)
    pipeline = Pipeline([ScriptedReader(20)], FakeEngine, [window, spy], limits=limits(batch_size=4), stop=stop)

    # when the scripted source ends
    stats = pipeline.run()

    # then the window was up for every frame, and what the screen showed is the annotated frame
    assert stats.counters.written == 20
    assert len(spy.visible) == 20 and min(spy.visible) >= 1
    assert spy.shown is not None and spy.screen is not None
    match = cv2.matchTemplate(spy.screen, spy.shown, cv2.TM_CCOEFF_NORMED).max()
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
        from PIL import ImageGrab

        self.last[frame.stream_id] = frame.image.copy()
        self._count += 1
        if self._count == self._grab_after:
            cv2.waitKey(50)
            self.screen = cv2.cvtColor(np.asarray(ImageGrab.grab(xdisplay=self._display)), cv2.COLOR_RGB2BGR)

    def close(self) -> None:
        pass


def test_one_window_shows_every_stream_in_a_grid(display: str) -> None:
    pytest.importorskip("PIL.ImageGrab")
    # given two streams of the same length, shown in one window
    stop = StopFlag()
    spy = LastFrames(display, grab_after=20)
    window = WindowSink(TITLE, stop=stop, streams=2)
    readers = [ScriptedReader(10, stream_id=0), ScriptedReader(10, stream_id=1)]

    # when
    Pipeline(readers, FakeEngine, [window, spy], limits=limits(batch_size=2), stop=stop).run()

    # then the screen shows both streams' last annotated frames side by side
    assert spy.screen is not None and set(spy.last) == {0, 1}
    matches = [cv2.matchTemplate(spy.screen, spy.last[s], cv2.TM_CCOEFF_NORMED).max() for s in (0, 1)]
    assert min(matches) > 0.9, matches
    left, right = (cv2.minMaxLoc(cv2.matchTemplate(spy.screen, spy.last[s], cv2.TM_CCOEFF_NORMED))[3] for s in (0, 1))
    assert right[0] > left[0], "stream 1 is the second tile of the row"
    assert not window_exists()
