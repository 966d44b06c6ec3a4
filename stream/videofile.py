"""The annotated video file through PyAV: each frame at its own time, the source's audio beside, playable after a kill."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from stream.audiotrack import AudioTrack
from stream.outputs import OutputLock
from stream.types import Frame, MnstreamError, Prediction
from stream.videoformats import CONTAINERS, VideoFormat, choose_format

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)


_TIME_BASE = Fraction(1, 90_000)
"""MPEG's clock: whole ticks for 24, 25, 30, 29.97 and 10 fps alike."""
_LIVE_GRID_TIME_BASE = Fraction(1, 1000)
_X264_THREADS = 1 if (os.cpu_count() or 1) <= 2 else 2
"""x264's own threads compete with capture and inference for the cores; on two cores a second one bought nothing."""


class VideoFileSink:
    """Writes every frame it is given at its own time: its timestamp in a file, its capture time for a live source;
    a file's audio goes along, as far as the frames have got.

    A video has one frame size: frames of another (a stream that came back at a new resolution) are scaled to the
    first one's. A write that fails (a full disk) ends the run with a message naming the file and the cause.
    """

    needs_overlay = True
    reads_image = True

    def __init__(
        self,
        path: str,
        *,
        fps: float | None,
        overwrite: bool = False,
        video_format: VideoFormat | None = None,
        audio_from: str | None = None,
    ) -> None:
        """Takes the file for this run; the video opens with the first frame, whose size it takes.

        Args:
            path: The video to write.
            fps: A file's nominal frame rate, the grid of an AVI; None for a live source.
            overwrite: Whether an existing file may be replaced.
            video_format: The codec and its quality; None for the extension's defaults (`CONTAINERS`).
            audio_from: The video file whose audio goes into this one; None for none.

        Raises:
            UsageError: The path is unusable, exists without `overwrite`, or another run is writing it.
        """
        self._lock = OutputLock(path, option="--output", overwrite=overwrite, suffixes=CONTAINERS)
        self._path = path
        self._format = video_format or choose_format(Path(path).suffix.lower())
        self._fps = fps
        self._audio_from = audio_from
        self._output: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._audio: AudioTrack | None = None
        self._end_s = 0.0
        """Where the last frame written ends: the audio goes no further."""
        self._failed = False
        self._time_base = _TIME_BASE
        self._tick_s = float(_TIME_BASE)
        """The time base as a float: a `Fraction`'s arithmetic costs microseconds a frame, and the timestamps are
        floats anyway."""
        self._first_size = (0, 0)
        self._rescaled: set[tuple[int, int]] = set()
        self._first_captured_at = 0.0
        self._last_pts = -1

    def write(self, frame: Frame, prediction: Prediction) -> None:
        with self._naming_failures():
            if self._output is None:
                self._open(frame)
            video_frame = self._video_frame(frame)
            if self._audio is not None:
                self._audio.write_until(video_frame.pts * self._tick_s)
            self._output.mux(self._stream.encode(video_frame))

    def close(self) -> None:
        """Flushes the encoder, writes the audio up to the end of the last frame, and finishes the file.

        Raises:
            MnstreamError: The file could not be finished (a full disk).
        """
        output, self._output = self._output, None
        audio, self._audio = self._audio, None
        try:
            if output is not None:
                with self._naming_failures(), contextlib.ExitStack() as closing:
                    closing.callback(output.close)
                    if audio is not None:
                        closing.callback(audio.close)
                    output.mux(self._stream.encode(None))
                    if audio is not None:
                        audio.write_until(self._end_s)
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _naming_failures(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            if self._failed:
                # The first failure ends the run and was reported; finishing the file afterwards saves what it can
                # (a full disk refuses the last fragment and the index again) and has nothing new to say.
                return
            self._failed = True
            raise MnstreamError(f"cannot write {self._path}: {error.strerror or error}") from error

    def _open(self, frame: Frame) -> None:
        # PyAV is imported here, after cv2: its own FFmpeg libraries loaded first make OpenCV's windows hang
        # (PyAV issue 978).
        import av

        height, width = frame.image.shape[:2]
        self._first_size = (width, height)
        self._first_captured_at = frame.captured_at
        video_format, codec = self._format, self._format.codec
        rate = Fraction(self._fps).limit_denominator(1001) if self._fps else None
        if not video_format.container.has_timestamps:
            self._time_base = 1 / rate if rate else _LIVE_GRID_TIME_BASE
            self._tick_s = float(self._time_base)
        self._output = av.open(self._path, "w", options=dict(video_format.container.options))
        stream = self._output.add_stream(codec.encoder, rate=rate)
        # 4:2:0 chroma needs even sides: an odd first size loses its last row or column.
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = codec.pixel_format
        stream.time_base = stream.codec_context.time_base = self._time_base
        stream.options = video_format.encoder_options
        if codec.encoder == "libx264":
            stream.codec_context.thread_count = _X264_THREADS
        self._stream = stream
        if self._audio_from is not None:
            self._audio = AudioTrack.open(self._audio_from, self._output, video_format.container, name=self._path)

    def _video_frame(self, frame: Frame) -> av.VideoFrame:
        import av

        image = self._fitted(frame.image)
        if self._format.codec.pixel_format == "yuv420p":
            # OpenCV's conversion costs a tenth of PyAV's (0.14 ms a 768x432 frame against 1.3); its planes go to the
            # encoder as they are, without a copy.
            planes = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
            video_frame = av.VideoFrame.from_numpy_buffer(planes, format="yuv420p")
        else:
            video_frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        seconds = frame.position_s if frame.position_s is not None else frame.captured_at - self._first_captured_at
        # Two frames on one tick (an AVI's grid, a file with repeated timestamps) would be refused by the muxer.
        self._last_pts = max(round(seconds / self._tick_s), self._last_pts + 1)
        video_frame.pts = self._last_pts
        video_frame.time_base = self._time_base
        self._end_s = self._last_pts * self._tick_s + (1 / self._fps if self._fps else 0.0)
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
