"""The annotated video file: H.264, VP9 or MJPEG through PyAV, each frame at its own time, playable after a kill."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from stream.outputs import OutputLock
from stream.types import Frame, MnstreamError, Prediction

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VideoCodec:
    """How one kind of file is encoded and muxed."""

    encoder: str
    pixel_format: str
    options: Mapping[str, str] = field(default_factory=dict)
    """The encoder's private options."""
    container_options: Mapping[str, str] = field(default_factory=dict)
    has_timestamps: bool = True
    """False for AVI, which has none: its frames sit on a fixed grid and the muxer fills gaps with repeats."""


# ultrafast at crf 28, measured on the shared 768x432 clip against OpenCV's mp4v writer it replaces: 1.3 ms a
# frame (mp4v 1.4), 6.3 MB (6.8) at 40.3 dB PSNR (38.9). superfast costs twice the time, veryfast three times.
_H264 = VideoCodec(
    "libx264",
    "yuv420p",
    {"preset": "ultrafast", "crf": "28"},
    # Fragmented MP4: the index goes out with every fragment (a keyframe, at most 1 s of video), flushed to disk at
    # once, instead of once at the end, so a run killed or stopped by a full disk leaves every fragment written so
    # far playable. OpenCV and PyAV read a finished one as fully as a +faststart file, whose index is written only
    # when the run ends well (a killed one is unplayable).
    {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "1000000", "flush_packets": "1"},
)
VIDEO_CODECS: dict[str, VideoCodec] = {
    ".mp4": _H264,
    ".m4v": _H264,
    ".mov": _H264,
    # Matroska writes clusters as it goes: a killed run leaves every finished cluster readable.
    ".mkv": VideoCodec("libx264", "yuv420p", _H264.options, {"flush_packets": "1"}),
    # Real-time mode: the default "good" deadline costs ten times as much a frame.
    ".webm": VideoCodec("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "32"}),
    ".avi": VideoCodec("mjpeg", "yuvj420p", {"flags": "+qscale", "global_quality": str(3 * 118)}, has_timestamps=False),
}
"""Extension -> codec."""

_TIME_BASE = Fraction(1, 90_000)
"""MPEG's clock: whole ticks for 24, 25, 30, 29.97 and 10 fps alike."""
_LIVE_GRID_TIME_BASE = Fraction(1, 1000)
_X264_THREADS = 1 if (os.cpu_count() or 1) <= 2 else 2
"""x264's own threads compete with capture and inference for the cores; on two cores a second one bought nothing."""


class VideoFileSink:
    """Writes every frame it is given at its own time: its timestamp in a file, its capture time for a live source.

    A video has one frame size: frames of another (a stream that came back at a new resolution) are scaled to the
    first one's. A write that fails (a full disk) ends the run with a message naming the file and the cause.
    """

    needs_overlay = True

    def __init__(self, path: str, *, fps: float | None, overwrite: bool = False) -> None:
        """Takes the file for this run; the video opens with the first frame, whose size it takes.

        Args:
            path: The video to write; its extension chooses the codec (`VIDEO_CODECS`).
            fps: A file's nominal frame rate, the grid of an AVI; None for a live source.
            overwrite: Whether an existing file may be replaced.

        Raises:
            UsageError: The path is unusable, exists without `overwrite`, or another run is writing it.
        """
        self._lock = OutputLock(path, option="--output", overwrite=overwrite, suffixes=VIDEO_CODECS)
        self._path = path
        self._codec = VIDEO_CODECS[Path(path).suffix.lower()]
        self._fps = fps
        self._output: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._time_base = _TIME_BASE
        self._first_size = (0, 0)
        self._rescaled: set[tuple[int, int]] = set()
        self._first_captured_at = 0.0
        self._last_pts = -1

    def write(self, frame: Frame, prediction: Prediction) -> None:
        with self._naming_failures():
            if self._output is None:
                self._open(frame)
            self._output.mux(self._stream.encode(self._video_frame(frame)))

    def close(self) -> None:
        """Flushes the encoder and finishes the file.

        Raises:
            MnstreamError: The file could not be finished (a full disk).
        """
        output, self._output = self._output, None
        try:
            if output is not None:
                with self._naming_failures():
                    try:
                        output.mux(self._stream.encode(None))
                    finally:
                        output.close()
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _naming_failures(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise MnstreamError(f"cannot write {self._path}: {error.strerror or error}") from error

    def _open(self, frame: Frame) -> None:
        # PyAV is imported here, after cv2: its own FFmpeg libraries loaded first make OpenCV's windows hang
        # (PyAV issue 978).
        import av

        height, width = frame.image.shape[:2]
        self._first_size = (width, height)
        self._first_captured_at = frame.captured_at
        codec = self._codec
        rate = Fraction(self._fps).limit_denominator(1001) if self._fps else None
        if not codec.has_timestamps:
            self._time_base = 1 / rate if rate else _LIVE_GRID_TIME_BASE
        self._output = av.open(self._path, "w", options=dict(codec.container_options))
        stream = self._output.add_stream(codec.encoder, rate=rate)
        # 4:2:0 chroma needs even sides: an odd first size loses its last row or column.
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = codec.pixel_format
        stream.time_base = stream.codec_context.time_base = self._time_base
        stream.options = dict(codec.options)
        if codec.encoder == "libx264":
            stream.codec_context.thread_count = _X264_THREADS
        self._stream = stream

    def _video_frame(self, frame: Frame) -> av.VideoFrame:
        import av

        image = self._fitted(frame.image)
        if self._codec.pixel_format == "yuv420p":
            # OpenCV's conversion costs a tenth of PyAV's (0.14 ms a 768x432 frame against 1.3).
            video_frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        else:
            video_frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        seconds = frame.position_s if frame.position_s is not None else frame.captured_at - self._first_captured_at
        # Two frames on one tick (an AVI's grid, a file with repeated timestamps) would be refused by the muxer.
        self._last_pts = max(round(seconds / self._time_base), self._last_pts + 1)
        video_frame.pts = self._last_pts
        video_frame.time_base = self._time_base
        return video_frame

    def _fitted(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if (width, height) != self._first_size:
            if (width, height) not in self._rescaled:
                self._rescaled.add((width, height))
                log.warning(
                    f"{self._path}: frames now come at {width}x{height}; they are scaled to the video's "
                    f"{self._first_size[0]}x{self._first_size[1]}"
                )
            image = cv2.resize(image, self._first_size, interpolation=cv2.INTER_AREA)
        return image[: self._stream.height, : self._stream.width]
