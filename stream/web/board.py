"""What the live page shows, kept up by the run's threads and read by the server's: each stream's newest frame,
its numbers and state, and the log of label changes. No server code here: the sink only ever swaps a reference.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from stream.events import Event, FramesDropped, RunEnded, SourceBack, SourceLost, StreamEnded
from stream.metrics import RateMeter
from stream.types import Frame, Label, Prediction, SourceInfo

CHANGES_KEPT = 500
"""Label changes the board remembers for a page or a script that connects later; older ones are forgotten."""
JPEG_QUALITY = 80
MAX_JPEG_WIDTH = 1280
"""Wider frames are shrunk before they are encoded: a tile is never that wide, and a 4K JPEG costs ten times more."""


class StreamState(enum.Enum):
    """What a stream's tile says of its source."""

    STARTING = "starting"
    """No frame yet: the model is loading, or the source has sent nothing."""
    LIVE = "live"
    RECONNECTING = "reconnecting"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Change:
    """A stream's shown (smoothed) label changed, at `frame`; the first label of a stream is a change too."""

    seq: int
    """Counts every change of the run from 1, for a follower to say where it left off."""
    stream_id: int
    stream: str
    frame: int
    at: float
    """UNIX time in seconds."""
    label: Label | None

    def as_json(self) -> dict[str, object]:
        return {
            "type": "change",
            "seq": self.seq,
            "stream_id": self.stream_id,
            "stream": self.stream,
            "frame": self.frame,
            "at": round(self.at, 3),
            "label": _label_json(self.label),
        }


@dataclass(frozen=True, slots=True)
class Shown:
    """A stream's newest frame, annotated, with what the page writes beside it."""

    seq: int
    """How many frames the stream had written with this one: a new number is a new picture."""
    frame: int
    image: np.ndarray
    prediction: Prediction
    fps: float | None
    latency_ms: float

    def as_json(self) -> dict[str, object]:
        smoothed = self.prediction.smoothed
        return {
            "frame": self.frame,
            "label": _label_json(smoothed),
            "top_k": [_label_json(label) for label in self.prediction.labels],
            "fps": None if self.fps is None else round(self.fps, 1),
            "latency_ms": round(self.latency_ms, 1),
        }


def _label_json(label: Label | None) -> dict[str, object] | None:
    return None if label is None else {"id": label.class_id, "name": label.name, "score": round(label.score, 4)}


class _Stream:
    """One stream's board entry; changed only under the board's lock."""

    def __init__(self, info: SourceInfo) -> None:
        self.info = info
        self.state = StreamState.STARTING
        self.written = 0
        self.dropped = 0
        self.shown: Shown | None = None
        self.shown_class: int | None = None
        self.jpeg: tuple[int, bytes] | None = None
        """The newest frame's JPEG and its `Shown.seq`, once someone has asked for it."""
        self.rate = RateMeter()
        """Ticked and read on the main thread only."""


class Board:
    """What the sink and the observer of a run keep for the page: O(1) per frame, and no encoding until a viewer
    asks for a JPEG.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._encoding = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._changes: deque[Change] = deque(maxlen=CHANGES_KEPT)
        self._change_count = 0
        self._ended = False
        # Frame.captured_at is monotonic; the change log is in UNIX time, as the JSON lines are.
        self._unix_offset_s = time.time() - time.monotonic()

    def show(self, infos: list[SourceInfo]) -> None:
        """The streams of the run, once their sources are open."""
        with self._lock:
            self._streams = {info.stream_id: _Stream(info) for info in infos}

    def write(self, frame: Frame, prediction: Prediction) -> None:
        """Takes the sink's annotated frame: the main thread's, which no one changes after it is written."""
        stream = self._streams[frame.stream_id]
        now = time.monotonic()
        stream.rate.tick(now)
        smoothed = prediction.smoothed
        shown_class = None if smoothed is None else smoothed.class_index
        with self._lock:
            stream.written += 1
            # Frames still queued when a source is lost or has ended are written after it: the state stays.
            if stream.state is StreamState.STARTING:
                stream.state = StreamState.LIVE
            stream.shown = Shown(
                stream.written,
                frame.index,
                frame.image,
                prediction,
                stream.rate.per_second(now),
                (now - frame.captured_at) * 1000,
            )
            if stream.written == 1 or shown_class != stream.shown_class:
                stream.shown_class = shown_class
                self._change_count += 1
                self._changes.append(
                    Change(
                        self._change_count,
                        frame.stream_id,
                        stream.info.name,
                        frame.index,
                        now + self._unix_offset_s,
                        smoothed,
                    )
                )

    def notify(self, event: Event) -> None:
        """Follows the streams' states and drops, from whichever thread sends the event."""
        # Most events (a frame read, inferred, written) say nothing the page shows: they pass without the lock.
        match event:
            case FramesDropped(stream_id=stream_id, count=count):
                with self._lock:
                    self._streams[stream_id].dropped += count
            case SourceLost(stream_id=stream_id):
                self._set_state(stream_id, StreamState.RECONNECTING)
            case SourceBack(stream_id=stream_id):
                self._set_state(stream_id, StreamState.LIVE)
            case StreamEnded(stream_id=stream_id):
                self._set_state(stream_id, StreamState.ENDED)
            case RunEnded():
                with self._lock:
                    self._ended = True
                    for stream in self._streams.values():
                        stream.state = StreamState.ENDED

    def _set_state(self, stream_id: int, state: StreamState) -> None:
        with self._lock:
            if stream_id in self._streams:
                self._streams[stream_id].state = state

    def stats(self) -> dict[str, object]:
        """Every stream's state, counts and newest label, and whether the run has ended: `/stats` and the page."""
        with self._lock:
            streams = [
                {
                    "id": stream_id,
                    "name": stream.info.name,
                    "kind": stream.info.kind.value,
                    "state": stream.state.value,
                    "written": stream.written,
                    "dropped": stream.dropped,
                    **({} if stream.shown is None else stream.shown.as_json()),
                }
                for stream_id, stream in self._streams.items()
            ]
            return {"type": "stats", "run": "ended" if self._ended else "running", "streams": streams}

    def fresh(self, seen: dict[int, int]) -> list[int]:
        """The streams with a newer frame than the `Shown.seq` in `seen` (stream id -> seq)."""
        with self._lock:
            return [
                stream_id
                for stream_id, stream in self._streams.items()
                if stream.shown is not None and stream.shown.seq != seen.get(stream_id)
            ]

    def jpeg(self, stream_id: int) -> tuple[Shown, bytes] | None:
        """The stream's newest frame and its JPEG, encoded at most once per frame; None before its first frame
        or for a stream the run does not have.
        """
        with self._lock:
            stream = self._streams.get(stream_id)
            shown = None if stream is None else stream.shown
        if shown is None:
            return None
        # Encoders wait for each other, never the sink: the same frame asked for twice is encoded once.
        with self._encoding:
            if stream.jpeg is None or stream.jpeg[0] != shown.seq:
                stream.jpeg = (shown.seq, _encode(shown.image))
            return shown, stream.jpeg[1]

    def has_stream(self, stream_id: int) -> bool:
        """Whether the run has this stream, whether or not it has shown a frame yet."""
        with self._lock:
            return stream_id in self._streams

    def changes_after(self, seq: int) -> list[Change]:
        """The remembered label changes after the one numbered `seq`, oldest first."""
        with self._lock:
            return [change for change in self._changes if change.seq > seq]

    @property
    def change_count(self) -> int:
        return self._change_count


def _encode(image: np.ndarray) -> bytes:
    height, width = image.shape[:2]
    if width > MAX_JPEG_WIDTH:
        image = cv2.resize(
            image, (MAX_JPEG_WIDTH, round(height * MAX_JPEG_WIDTH / width)), interpolation=cv2.INTER_AREA
        )
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {width}x{height} frame as JPEG")
    return jpeg.tobytes()
