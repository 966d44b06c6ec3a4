"""Test helpers: the shared assets, scripted sources and engines, index-encoded videos, an MJPEG stream server."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

import cv2
import numpy as np
import pytest
from rich.console import Console

from stream.cli import main
from stream.engines import Engine
from stream.labels import ClassNames
from stream.queues import StopFlag
from stream.recognizer import Recognizer, model_input
from stream.sources import Decoded
from stream.types import Frame, Prediction, SourceInfo, SourceKind

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("MNSTREAM_ASSETS", REPO.parent / "shared")).resolve()
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_asset(relative: str) -> Path:
    """The asset's path; a failure in CI and a skip elsewhere when it is missing."""
    path = ASSETS / relative
    if not path.exists():
        message = f"asset {path} is missing (set MNSTREAM_ASSETS to the shared assets folder)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def classify(engine: Engine, photos: list[Path]) -> np.ndarray:
    """Scores for photos prepared as the pipeline prepares frames, in one batch."""
    batch = np.stack([model_input(cv2.imread(str(photo)), engine.input_size) for photo in photos])
    return engine.infer(batch)


def top1(engine: Engine, scores: np.ndarray) -> list[str]:
    """The best class's name for each row of scores."""
    return [engine.classes.names[i] for i in scores.argmax(axis=1)]


def run_cli(*args: object) -> tuple[int, str]:
    """Runs `mnstream` in this process; returns the exit code and what it printed on its console."""
    console = Console(file=io.StringIO(), width=200)
    code = main([str(arg) for arg in args], console=console)
    return code, console.file.getvalue()


def run_mnstream(
    *args: object, timeout_s: float = 120, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `mnstream` in its own process, as a user does: its exit code, standard output and error.

    Args:
        args: The command line.
        timeout_s: A hang guard, not a speed bound.
        cwd: Where it runs; this process's folder when None.
        env: Its whole environment; this process's when None.
    """
    return subprocess.run(
        [sys.executable, "-m", "stream", *map(str, args)],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env={**(os.environ if env is None else env), "COLUMNS": "200"},
    )


BLOCK_TENSORFLOW = """
import importlib.abc
import sys

class BlockTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"tensorflow", "keras"}:
            raise ImportError(f"{name} is blocked: as if it were not installed")
        return None

sys.meta_path.insert(0, BlockTensorFlow())
"""
"""Python to run first in a child process that must run as where TensorFlow is not installed."""


def mobilenet_features() -> tuple[object, object]:
    """MobileNet 0.25/128 with the shared ImageNet weights, cut at its pooled features: its input and output.

    The offline cache holds the weights with the classifier top only, so a test's own classifier goes on top.
    """
    import keras

    imagenet = keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.25)
    pooled = next(layer for layer in imagenet.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    return imagenet.input, pooled.output


# Index-encoded frames: 16 bits as black/white cells along the bottom, big enough to survive lossy codecs and
# clear of the overlay panel in the top-left corner.
INDEX_BITS = 16


def index_frame(index: int, *, width: int = 320, height: int = 240) -> np.ndarray:
    image = np.full((height, width, 3), 90, np.uint8)
    cell = width // INDEX_BITS
    for bit in range(INDEX_BITS):
        value = 255 if index >> bit & 1 else 0
        image[height - cell :, bit * cell : (bit + 1) * cell] = value
    return image


def read_index(image: np.ndarray) -> int:
    height, width = image.shape[:2]
    cell = width // INDEX_BITS
    row = image[height - cell + cell // 4 : height - cell // 4]
    bits = [row[:, b * cell + cell // 4 : (b + 1) * cell - cell // 4].mean() > 127 for b in range(INDEX_BITS)]
    return sum(1 << bit for bit, on in enumerate(bits) if on)


def write_video(path: Path, frames: Iterable[np.ndarray], *, fps: float = 25.0) -> Path:
    writer = None
    for image in frames:
        if writer is None:
            height, width = image.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
            assert writer.isOpened(), f"cannot write test video {path}"
        writer.write(image)
    assert writer is not None, "no frames to write"
    writer.release()
    return path


def write_timed_video(path: Path, frames: Iterable[np.ndarray], times_s: Iterable[float]) -> Path:
    """An H.264 MP4 whose frames have the given timestamps: a variable frame rate, as phones record."""
    import av  # after cv2, as in stream.videofile

    time_base = Fraction(1, 90_000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", options={"preset": "ultrafast"})
        stream.time_base = stream.codec_context.time_base = time_base
        for image, at_s in zip(frames, times_s, strict=True):
            if not stream.width:
                stream.width, stream.height = image.shape[1], image.shape[0]
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = round(at_s / time_base), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


TONE_HZ = 440.0
ONSET_S = 3.0
"""When the test clips' tone starts: with frame 30 of the 10 fps shared video."""


def write_clip_with_audio(
    path: Path,
    video: Path,
    *,
    frames: int,
    audio_codec: str,
    onset_s: float,
    audio_start_s: float = 0.0,
    rate: int = 48_000,
) -> Path:
    """The video's first `frames` frames at their own times (H.264 in .mp4, VP9 in .webm) with a soundtrack in
    `audio_codec` from `audio_start_s`: silence, then a tone from `onset_s` to the end, interleaved as a recorder
    writes them.
    """
    import av  # after cv2, as in stream.videofile

    capture = cv2.VideoCapture(str(video))
    fps = Fraction(capture.get(cv2.CAP_PROP_FPS)).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        picture = container.add_stream("libx264" if path.suffix == ".mp4" else "libvpx-vp9", rate=fps)
        picture.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        picture.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        picture.pix_fmt = "yuv420p"
        picture.options = {"preset": "ultrafast"} if path.suffix == ".mp4" else {"deadline": "realtime"}
        sound = container.add_stream(audio_codec, rate=rate, layout="stereo")
        sound.codec_context.open()
        samples_per_frame = sound.codec_context.frame_size
        written = round(audio_start_s * rate)
        for index in range(frames):
            ok, image = capture.read()
            assert ok, f"{video} has fewer than {frames} frames"
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = index
            container.mux(picture.encode(frame))
            while written + samples_per_frame <= (index + 1) / fps * rate:
                at_s = np.arange(written, written + samples_per_frame) / rate
                tone = np.where(at_s >= onset_s, 0.5 * np.sin(2 * np.pi * TONE_HZ * at_s), 0).astype(np.float32)
                chunk = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts = rate, written
                container.mux(sound.encode(chunk))
                written += samples_per_frame
        container.mux(picture.encode(None))
        container.mux(sound.encode(None))
    capture.release()
    return path


@dataclasses.dataclass(frozen=True)
class Soundtrack:
    """A file's first audio stream as PyAV decodes it."""

    codec: str
    start_s: float
    """The time of its first decoded sample."""
    end_s: float
    onset_s: float
    """The time of the first sample of the tone `write_clip_with_audio` writes."""
    packets: list[bytes]


def soundtrack(path: Path) -> Soundtrack | None:
    """The file's audio, decoded up to the end or the first damage (a cut-off last fragment); None where it has
    none.
    """
    import av  # after cv2, as in stream.videofile

    packets, frames = [], []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        with contextlib.suppress(av.InvalidDataError):
            for packet in container.demux(stream):
                packets += [bytes(packet)] if packet.size else []
    with av.open(str(path)) as container, contextlib.suppress(av.InvalidDataError):
        for frame in container.decode(container.streams.audio[0]):
            frames.append(frame)  # noqa: PERF402 (what decoded before the damage, which list() would lose)
    assert frames, f"the audio of {path} does not decode"
    start_s = float(frames[0].time)
    # The first channel: a planar frame's first row, or every channel-th sample of an interleaved one.
    samples = np.concatenate(
        [frame.to_ndarray()[0, :: 1 if frame.format.is_planar else len(frame.layout.channels)] for frame in frames]
    )
    rate = frames[0].sample_rate
    loud = np.flatnonzero(np.abs(samples) > 0.25)
    return Soundtrack(
        stream.codec_context.name,
        start_s,
        start_s + len(samples) / rate,
        start_s + (loud[0] / rate if loud.size else float("inf")),
        packets,
    )


def decode_until_damaged(path: Path) -> tuple[list[np.ndarray], list[float], str]:
    """Every frame PyAV decodes before the end or the first damage (a cut-off last fragment), their times, and
    the codec.
    """
    import av  # after cv2, as in stream.videofile

    images, times_s = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        with contextlib.suppress(av.InvalidDataError):
            for frame in container.decode(stream):
                images.append(frame.to_ndarray(format="bgr24"))
                times_s.append(float(frame.time))
        return images, times_s, stream.codec_context.name


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} is not a playable video"
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames, fps


def recognizing(engine: Engine | Callable[[], Engine], **options: object) -> Callable[[], Recognizer]:
    """A recognizer factory for a pipeline: the engine (or what makes it, on the inference thread), with options."""
    make = engine if callable(engine) else lambda: engine
    return lambda: Recognizer(make(), **options)


class ScriptedReader:
    """Index-encoded frames from memory: a file or a live source, optionally slow, failing or going dark.

    `outages` maps a frame index to how many reopen attempts fail before the source delivers again from that
    frame; a live source that has delivered all its frames never comes back. With `starts`, no frame is delivered
    before that event is set (the pipeline's model_ready: a live source's frames are not dropped while it loads).
    """

    def __init__(
        self,
        count: int,
        *,
        kind: SourceKind = SourceKind.VIDEO_FILE,
        delay_s: float = 0.0,
        fail_at: int | None = None,
        size: tuple[int, int] = (320, 240),
        outages: dict[int, int] | None = None,
        stream_id: int = 0,
        starts: threading.Event | None = None,
    ) -> None:
        width, height = size
        self.info = SourceInfo(stream_id, f"scripted {stream_id}", kind, width, height, fps=25.0, frame_count=count)
        self._count = count
        self._delay_s = delay_s
        self._fail_at = fail_at
        self._next = 0
        self._outages = dict(outages or {})
        self._starts = starts
        self._dark = False
        self._failing_reopens = 0
        self.reopens = 0
        self.closed = False

    def read(self) -> Decoded | None:
        if self._next == self._fail_at:
            raise RuntimeError(f"scripted failure at frame {self._next}")
        if self._next in self._outages:
            self._failing_reopens = self._outages.pop(self._next)
            self._dark = True
        if self._dark or self._next >= self._count:
            return None
        if self._starts is not None:
            self._starts.wait()
        time.sleep(self._delay_s)
        image = index_frame(self._next, width=self.info.width, height=self.info.height)
        position_s = None if self.info.kind.is_live else self._next / self.info.fps
        self._next += 1
        return Decoded(image, position_s=position_s)

    @property
    def delivered(self) -> int:
        """Frames read so far."""
        return self._next

    def open(self) -> ScriptedReader:
        """A scripted source is its own reader."""
        return self

    def reopen(self, stop: StopFlag) -> bool:
        self.reopens += 1
        if not self._dark or self._failing_reopens:
            self._failing_reopens = max(self._failing_reopens - 1, 0)
            return False
        self._dark = False
        return True

    def close(self) -> None:
        self.closed = True


class FakeEngine:
    """Plumbing only, never recognition: 'bright' scores the mean pixel value. Records the batch sizes it saw."""

    name = "fake"
    input_size = (32, 32)
    classes = ClassNames(ids=("0", "1"), names=("dark", "bright"))

    def __init__(self, *, delay_s: float = 0.0, fail_on_call: int | None = None) -> None:
        self.batch_sizes: list[int] = []
        self.closed = False
        self._delay_s = delay_s
        self._fail_on_call = fail_on_call

    def infer(self, images: np.ndarray) -> np.ndarray:
        if len(self.batch_sizes) == self._fail_on_call:
            raise RuntimeError("scripted engine failure")
        self.batch_sizes.append(len(images))
        time.sleep(self._delay_s)
        bright = images.mean(axis=(1, 2, 3)) / 255
        return np.stack([1 - bright, bright], axis=1)

    def close(self) -> None:
        self.closed = True


class RecordingSink:
    """Remembers what reached the sinks, for assertions on the test thread after the run."""

    needs_overlay = False
    reads_image = True

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.predictions: list[Prediction] = []
        self.closed = False

    def write(self, frame: Frame, prediction: Prediction) -> None:
        self.frames.append(frame)
        self.predictions.append(prediction)

    def close(self) -> None:
        self.closed = True


def jpeg_frames(video: Path, *, count: int, width: int = 384) -> list[bytes]:
    """The video's first `count` frames, scaled to `width`, each encoded as a JPEG."""
    capture = cv2.VideoCapture(str(video))
    jpegs = []
    while len(jpegs) < count:
        ok, image = capture.read()
        assert ok, f"{video} has fewer than {count} frames"
        height = round(image.shape[0] * width / image.shape[1])
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        jpegs.append(cv2.imencode(".jpg", small)[1].tobytes())
    capture.release()
    return jpegs


class MjpegServer:
    """A real HTTP MJPEG stream (`multipart/x-mixed-replace`, as IP cameras send) on 127.0.0.1, at a set pace.

    Parts are numbered from 1 across connections and cycle through `jpegs`; every `corrupt_every`-th is random
    bytes instead, announced as a JPEG of that length. After a part in `cut_after` the server closes the
    connection, as a stream that stops delivering, and the client's next request carries on from the next part.
    Once all `parts` are sent the stream is gone: its connection ends and later requests are answered 404.
    Serves from `__enter__` to `__exit__`, which always shuts it down; `sent` and `corrupted` count what went out.
    """

    BOUNDARY = b"mnstreamframe"

    def __init__(
        self,
        jpegs: Sequence[bytes],
        *,
        parts: int,
        interval_s: float,
        corrupt_every: int = 0,
        cut_after: Iterable[int] = (),
    ) -> None:
        self._jpegs = jpegs
        self._parts = parts
        self._interval_s = interval_s
        self._corrupt_every = corrupt_every
        self._cut_after = frozenset(cut_after)
        self._counting = threading.Lock()
        self._closing = threading.Event()
        self.sent = 0
        self.corrupted = 0
        self.connections = 0
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_MjpegHandler, stream=self))
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/stream"

    def __enter__(self) -> Self:
        threading.Thread(target=self._http.serve_forever, name="mjpeg-server", daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._closing.set()
        self._http.shutdown()
        self._http.server_close()

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        """Answers one request: the parts not sent yet, at the pace, or 404 once all are sent."""
        with self._counting:
            if self.sent >= self._parts:
                handler.send_error(404, "the stream has ended")
                return
            self.connections += 1
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={self.BOUNDARY.decode()}")
        handler.end_headers()
        while not self._closing.is_set() and (number := self.sent + 1) <= self._parts:
            corrupt = bool(self._corrupt_every) and number % self._corrupt_every == 0
            jpeg = self._jpegs[(number - 1) % len(self._jpegs)]
            body = np.random.default_rng(number).bytes(len(jpeg)) if corrupt else jpeg
            header = b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body)
            try:
                handler.wfile.write(b"--" + self.BOUNDARY + b"\r\n" + header + body + b"\r\n")
                handler.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            with self._counting:
                self.sent = number
                self.corrupted += corrupt
            if number in self._cut_after:
                return
            self._closing.wait(self._interval_s)


class _MjpegHandler(BaseHTTPRequestHandler):
    def __init__(self, *args: object, stream: MjpegServer) -> None:
        self._stream = stream
        super().__init__(*args)

    def do_GET(self) -> None:
        self._stream.serve(self)

    def log_message(self, format: str, *args: object) -> None:
        # Each request would print a line into the test's output.
        pass


SMALL_MODEL = "models/tflite/mobilenet_v1_0.25_128_quant.tflite"


def run_on_stream(url: str, *options: str) -> tuple[int, dict[str, int], str]:
    """Runs mnstream headless on the stream with the smallest int8 model, in this process, until the stream has
    gone for good (one reconnect attempt, at once).

    Returns:
        The exit code, the whole-number frame counts of the summary by row name, and everything printed.
    """
    console = Console(file=io.StringIO(), width=200)
    model = require_asset(SMALL_MODEL)
    arguments = ["--source", url, "--model", str(model), "--headless", "--reconnect", "1", "--reconnect-delay", "0"]
    code = main([*arguments, *options], console=console)
    output = console.file.getvalue()
    counts = {row: int(count) for row, count in re.findall(r"^ *([a-z]+) +│ +(\d+) ", output, re.MULTILINE)}
    return code, counts, output


def start_mnstream(*args: object, stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """`mnstream ARGS` in its own process, as a user starts it: text output, standard error kept, wide tables."""
    return subprocess.Popen(
        [sys.executable, "-m", "stream", *map(str, args)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], *, timeout_s: float = 120) -> None:
    """Returns once `condition` holds; fails if the process ends first, or after `timeout_s` (a hang)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the run ended first: {process.communicate()}"
        assert time.monotonic() < deadline, f"still waiting after {timeout_s} s"
        time.sleep(0.05)


def grown(path: Path, size: int = 100_000) -> Callable[[], bool]:
    """Whether a file being written has passed `size` bytes: a run's output is well under way."""
    return lambda: path.exists() and path.stat().st_size > size


def has_a_line(path: Path) -> Callable[[], bool]:
    """Whether a file being written line by line (JSON lines) has its first whole line."""
    return lambda: path.exists() and "\n" in path.read_text()
