"""Where annotated frames and predictions go: a window, the console (rich), plain top-k lines; output names."""

from __future__ import annotations

import math
import os
import time
from typing import Protocol

import cv2
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from stream.metrics import STAGES, RateMeter, RunStats
from stream.queues import StopFlag
from stream.types import Frame, Prediction, SourceInfo, UsageError

_QUIT_KEYS = frozenset({ord("q"), ord("Q"), 27})
_PAUSE_KEY = ord(" ")
_NO_KEY = 0xFF


class Sink(Protocol):
    """Where frames and their predictions go, on the main thread, in order; closed once at the end."""

    needs_overlay: bool
    """Whether it takes the frame with the overlay drawn on its image; otherwise the frame as captured."""
    reads_image: bool
    """Whether it looks at the frame's image at all: where no sink takes the captured image, the overlay is drawn
    on it instead of on a copy."""

    def write(self, frame: Frame, prediction: Prediction) -> None:
        """Takes one frame (its image annotated when `needs_overlay`) and its prediction, in order."""
        ...

    def close(self) -> None: ...


def require_display() -> None:
    """Raises UsageError where no window can open (a server, a container, an SSH session without X)."""
    if not (os.name == "nt" or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UsageError("no display to open a window on (DISPLAY is not set); add --headless")


class WindowSink:
    """An OpenCV window on the main thread, showing one stream or a grid of them: q or Esc quits, space pauses.

    A file plays at its own pace, each frame at its timestamp as in a video player, however fast it is processed,
    unless `paces_files` is off; live sources are shown as soon as their frames are ready.
    """

    needs_overlay = True
    reads_image = True
    _MAX_INITIAL_WIDTH, _MAX_INITIAL_HEIGHT = 1600, 900
    """A 4K source opens in a window that fits an ordinary screen; the user can still enlarge it."""

    def __init__(self, title: str, infos: list[SourceInfo], *, stop: StopFlag, paces_files: bool = True) -> None:
        require_display()
        self._title = title
        self._stop = stop
        self._columns = math.ceil(math.sqrt(len(infos)))
        self._rows = math.ceil(len(infos) / self._columns)
        self._grid: np.ndarray | None = None
        self._sized = False
        self._paces_files = paces_files
        self._position_zero_at: dict[int, float] = {}
        # Resizable, aspect kept, without the toolbar that the Qt build of OpenCV adds by default.
        cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)

    def write(self, frame: Frame, prediction: Prediction) -> None:
        image = frame.image if self._columns * self._rows == 1 else self._place(frame)
        if not self._sized:
            height, width = image.shape[:2]
            shrink = max(1.0, width / self._MAX_INITIAL_WIDTH, height / self._MAX_INITIAL_HEIGHT)
            cv2.resizeWindow(self._title, round(width / shrink), round(height / shrink))
            self._sized = True
        self._obey(self._wait_until_due(frame))
        if self._stop.is_set():
            return
        cv2.imshow(self._title, image)
        self._obey(cv2.waitKey(1) & 0xFF)
        if cv2.getWindowProperty(self._title, cv2.WND_PROP_VISIBLE) < 1:
            self._stop.set()

    def _wait_until_due(self, frame: Frame) -> int:
        """Waits, answering keys, until a file's frame is due at its timestamp; returns the key pressed."""
        position_s = frame.position_s
        if position_s is None or not self._paces_files:
            return _NO_KEY
        now = time.monotonic()
        # A late frame (a slow start, a pause) moves the clock on, so the frames after it do not rush to catch up.
        zero_at = max(self._position_zero_at.get(frame.stream_id, -math.inf), now - position_s)
        self._position_zero_at[frame.stream_id] = zero_at
        wait_ms = round((zero_at + position_s - now) * 1000)
        return cv2.waitKey(wait_ms) & 0xFF if wait_ms >= 1 else _NO_KEY

    def _obey(self, key: int) -> None:
        """Space pauses; q or Esc ends the run the way Ctrl-C does, after this frame has reached every sink."""
        if key == _PAUSE_KEY:
            key = self._wait_while_paused()
        if key in _QUIT_KEYS:
            self._stop.set()

    def _place(self, frame: Frame) -> np.ndarray:
        """The grid with this stream's tile updated; tiles take the first frame's shape, shrunk to fit the grid, and
        a stream of another shape is fitted into its tile with its aspect kept.
        """
        if self._grid is None:
            height, width = frame.image.shape[:2]
            shrink = max(
                1.0, self._columns * width / self._MAX_INITIAL_WIDTH, self._rows * height / self._MAX_INITIAL_HEIGHT
            )
            self._tile = (round(width / shrink), round(height / shrink))
            self._grid = np.zeros((self._rows * self._tile[1], self._columns * self._tile[0], 3), np.uint8)
        width, height = self._tile
        row, column = divmod(frame.stream_id, self._columns)
        _fit_into(self._grid[row * height : (row + 1) * height, column * width : (column + 1) * width], frame.image)
        return self._grid

    def _wait_while_paused(self) -> int:
        while not self._stop.is_set():
            key = cv2.waitKey(50) & 0xFF
            if key == _PAUSE_KEY:
                return _NO_KEY
            if key in _QUIT_KEYS or cv2.getWindowProperty(self._title, cv2.WND_PROP_VISIBLE) < 1:
                return key if key in _QUIT_KEYS else 27
        return _NO_KEY

    def close(self) -> None:
        cv2.destroyWindow(self._title)
        # Windows close only once the HighGUI event loop runs again.
        cv2.waitKey(1)


def _fit_into(cell: np.ndarray, image: np.ndarray) -> None:
    """Draws the image as large as fits in the cell, centred, without stretching it."""
    cell_height, cell_width = cell.shape[:2]
    height, width = image.shape[:2]
    scale = min(cell_width / width, cell_height / height)
    fit_width, fit_height = max(1, round(width * scale)), max(1, round(height * scale))
    if (fit_width, fit_height) != (cell_width, cell_height):
        cell[:] = 0
    top, left = (cell_height - fit_height) // 2, (cell_width - fit_width) // 2
    target = cell[top : top + fit_height, left : left + fit_width]
    cv2.resize(image, (fit_width, fit_height), dst=target, interpolation=cv2.INTER_AREA)


class Routed:
    """Gives each stream its own sink: an annotated file or a window per stream."""

    needs_overlay = True
    reads_image = True

    def __init__(self, sinks: dict[int, Sink]) -> None:
        self._sinks = sinks

    def write(self, frame: Frame, prediction: Prediction) -> None:
        self._sinks[frame.stream_id].write(frame, prediction)

    def close(self) -> None:
        # Every one is closed, even after one fails: the others' videos must stay playable.
        errors = []
        for sink in self._sinks.values():
            try:
                sink.close()
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]


class ConsoleSink:
    """A progress bar per source of known length; in headless mode also what each stream sees, its FPS and latency.

    Labels are logged once every `interval_s` per stream, and at once whenever that stream's top-1 changes.
    """

    needs_overlay = False
    reads_image = False

    def __init__(self, console: Console, infos: list[SourceInfo], *, log_labels: bool, interval_s: float) -> None:
        self._console = console
        self._names = {info.stream_id: info.name for info in infos}
        self._log_labels = log_labels
        self._interval_s = interval_s
        self._last_logged_at = dict.fromkeys(self._names, -math.inf)
        self._last_top: dict[int, str | None] = dict.fromkeys(self._names)
        self._rates = {stream_id: RateMeter() for stream_id in self._names}
        self._progress: Progress | None = None
        self._tasks = {}
        if any(info.frame_count for info in infos):
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[fps]:>6} frames/s"),
                TimeRemainingColumn(),
                console=console,
            )
            self._tasks = {
                info.stream_id: self._progress.add_task(escape(info.name), total=info.frame_count, fps=_rate_text(None))
                for info in infos
                if info.frame_count
            }

    def write(self, frame: Frame, prediction: Prediction) -> None:
        stream_id = frame.stream_id
        now = time.monotonic()
        rate = self._rates[stream_id]
        rate.tick(now)
        fps = _rate_text(rate.per_second(now))
        if stream_id in self._tasks:
            # Shown from the first frame on, so a model that fails to load leaves no empty bar behind.
            if not self._progress.live.is_started:
                self._progress.start()
            self._progress.update(self._tasks[stream_id], advance=1, fps=fps)
        if not self._log_labels:
            return
        # The smoothed label, not the frame's own top-1: a label that flickers in and out would log every frame.
        top = prediction.smoothed.name if prediction.smoothed else None
        if top != self._last_top[stream_id] or now - self._last_logged_at[stream_id] >= self._interval_s:
            self._last_top[stream_id], self._last_logged_at[stream_id] = top, now
            seen = "  ".join(f"{label.name} {label.score:.2f}" for label in prediction.labels[:3]) or "nothing"
            self._console.print(
                f"[cyan]{escape(self._names[stream_id])}[/] #{frame.index:<6} [bold]{escape(seen)}[/]  "
                f"{fps} fps  {(now - frame.captured_at) * 1000:.0f} ms",
                highlight=False,
                soft_wrap=True,
            )

    def close(self) -> None:
        if self._progress is not None and self._progress.live.is_started:
            self._progress.stop()


def _rate_text(per_second: float | None) -> str:
    return "-" if per_second is None else f"{per_second:.1f}"


class TopKPrinter:
    """Still images' output: one `decode_predictions`-style list per image, as Keras prints it."""

    needs_overlay = False
    reads_image = False

    def __init__(self, console: Console) -> None:
        self._console = console

    def write(self, frame: Frame, prediction: Prediction) -> None:
        top = [label.as_tuple() for label in prediction.labels]
        self._console.print(f"{frame.origin}: {top}", markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        pass


def summary_table(infos: list[SourceInfo], stats: RunStats) -> Table:
    """Per stream: frames read, inferred, written and dropped; beside it the mean and p95 latency of each stage."""
    elapsed = (stats.finished_at or time.monotonic()) - stats.started_at
    frames = Table(title="frames", show_edge=False)
    frames.add_column("")
    columns = [(info.name, stats.stream(info.stream_id).counters) for info in infos]
    if len(infos) > 1:
        columns.append(("all", stats.counters))
    for name, _ in columns:
        frames.add_column(escape(name) if len(infos) > 1 else "count", justify="right")
    rows = [
        ("read", lambda counters: str(counters.read)),
        ("inferred", lambda counters: str(counters.inferred)),
        ("written", lambda counters: str(counters.written)),
        ("dropped", lambda counters: str(counters.dropped)),
        ("per second", lambda counters: f"{counters.written / elapsed:.1f}" if elapsed > 0 else "-"),
    ]
    if any(info.kind.is_live for info in infos):
        rows += [
            ("undecodable", lambda counters: str(counters.undecodable)),
            ("reconnects", lambda counters: str(counters.reconnects)),
            ("lost s", lambda counters: f"{counters.lost_s:.1f}"),
        ]
    for label, cell in rows:
        frames.add_row(label, *(cell(counters) for _, counters in columns))
    latency = Table(title="latency", show_edge=False)
    latency.add_column("")
    latency.add_column("mean ms", justify="right")
    latency.add_column("p95 ms", justify="right")
    for stage in STAGES:
        histogram = stats.latency[stage]
        latency.add_row(stage, f"{histogram.mean_ms:.1f}", f"{histogram.percentile_ms(95):.1f}")
    summary = Table.grid(padding=(0, 4))
    summary.title = escape(f"mnstream: {', '.join(info.name for info in infos)}")
    summary.title_justify = "left"
    summary.add_row(frames, latency)
    return summary
