"""Frame readers for cameras, video files, URLs and images, and the capture loop that feeds the model queue."""

from __future__ import annotations

import dataclasses
import glob
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from stream import queues
from stream.config import InputConfig, StreamConfig
from stream.events import FrameRead, FramesDropped, FramesUndecodable, Observer, SourceBack, SourceLost
from stream.queues import StopFlag
from stream.types import DropPolicy, Frame, SourceError, SourceInfo, SourceKind, UsageError

log = logging.getLogger(__name__)

URL_TIMEOUT_MS = 10_000
FAILED_READS_AT_THE_END = 10
"""Failed reads in a row after which a source has ended, or is lost, rather than sent frames it cannot decode.

OpenCV's read fails alike for a frame FFmpeg cannot decode (a corrupt part of an MJPEG stream, a broken JPEG in a
file), after which the next read returns the frame after it, and at the end of a file or a lost stream, where every
read fails at once (a stalled stream's first after its read timeout). A failure is only known to have been a damaged
frame once a frame follows it; a burst of more damaged frames than this is taken for a lost stream and reconnected.
"""
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How a live source that stops delivering is reopened: `attempts` tries, the delay doubling from `delay_s`."""

    attempts: int = 0
    delay_s: float = 1.0
    max_delay_s: float = 30.0

    def delays(self) -> Iterator[float]:
        """The wait before each attempt."""
        return (min(self.delay_s * 2**attempt, self.max_delay_s) for attempt in range(self.attempts))


NO_RECONNECT = Reconnect()
"""A live source that stops delivering has ended."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """One frame as a reader returns it."""

    image: np.ndarray
    """BGR uint8."""
    origin: str = ""
    """The file it came from, for sources of many files (image folders)."""
    position_s: float | None = None
    """Its timestamp in a video file; None for live sources and still images."""


class FrameReader(Protocol):
    """Owns one capture device or file; used from one thread at a time."""

    info: SourceInfo

    def read(self) -> Decoded | None:
        """The next frame, or None when none was read: at the end of the stream, where every later read is None
        too, or for a frame that could not be decoded, after which reading goes on.
        """
        ...

    def reopen(self, stop: StopFlag) -> bool:
        """Opens the source again after it stopped delivering; False if it cannot be opened now.

        Raises:
            queues.Stopped: `stop` was set while the open was blocked (a network stream's timeout).
        """
        ...

    def close(self) -> None: ...


class Source(Protocol):
    """What a capture thread opens: it reads, reopens and closes the reader it gets on that thread alone."""

    info: SourceInfo

    def open(self) -> FrameReader: ...


class Probed:
    """A source already opened on the main thread, its reader handed to the capture thread by `open`.

    Opening on the main thread makes a source that cannot be opened one line and exit code 2 before any output
    file exists. Opening it again on the capture thread would cost a second connection to a stream, whose first
    frames the probe would have taken, and a second open of a camera; so the probed reader itself is handed over,
    before the capture thread starts, and from then on that thread alone uses it, reopening it there.
    """

    def __init__(self, reader: FrameReader) -> None:
        self.info = reader.info
        self._reader: FrameReader | None = reader

    def open(self) -> FrameReader:
        """The reader, once: the capture thread owns it from here."""
        reader, self._reader = self._reader, None
        if reader is None:
            raise RuntimeError(f"{self.info.name} was handed to a capture thread already")
        return reader

    def close(self) -> None:
        """Closes the reader if no capture thread took it (the run was refused before it started)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def open_readers(config: InputConfig) -> list[FrameReader]:
    """Opens every stream the config names, in order, on this thread; stream ids are their positions.

    Raises:
        UsageError: No stream was given.
        SourceError: One cannot be opened (those already open are closed again).
    """
    if not config.streams:
        raise UsageError("nothing to read: give --camera INDEX or --source FILE|URL|FOLDER|GLOB (repeat for more)")
    readers: list[FrameReader] = []
    try:
        for stream_id, stream in enumerate(config.streams):
            readers.append(open_reader(stream, stream_id=stream_id))
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    _name_uniquely(readers)
    return readers


def open_reader(stream: StreamConfig, *, stream_id: int = 0) -> FrameReader:
    """Opens one camera or source.

    Raises:
        SourceError: It cannot be opened, with what to check.
    """
    if stream.camera is not None:
        reader: FrameReader = VideoCaptureReader.open(stream.camera, SourceKind.CAMERA, stream_id=stream_id)
    elif "://" in (source := str(stream.source)):
        reader = VideoCaptureReader.open(source, SourceKind.URL, stream_id=stream_id)
    elif _is_glob(source) or Path(source).is_dir() or Path(source).suffix.lower() in IMAGE_SUFFIXES:
        reader = ImageReader.open(source, stream_id=stream_id)
    else:
        reader = VideoCaptureReader.open(source, SourceKind.VIDEO_FILE, stream_id=stream_id)
    if stream.name:
        reader.info = dataclasses.replace(reader.info, name=stream.name)
    return reader


def _is_glob(source: str) -> bool:
    # A file that exists is itself, whatever brackets its name holds ("cam[2].mp4").
    return glob.has_magic(source) and not Path(source).exists()


def _name_uniquely(readers: list[FrameReader]) -> None:
    """Two streams from files of the same name would be told apart nowhere: number the later ones."""
    seen: dict[str, int] = {}
    for reader in readers:
        name = reader.info.name
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            reader.info = dataclasses.replace(reader.info, name=f"{name} ({seen[name]})")


def as_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded frame (gray, BGRA, 16-bit) as the BGR uint8 the rest of the pipeline draws on."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise SourceError(f"frames of type {image.dtype} are not supported; convert the source to 8 or 16 bits")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class VideoCaptureReader:
    """A camera, video file or stream URL through `cv2.VideoCapture`."""

    def __init__(self, capture: cv2.VideoCapture, target: int | str, info: SourceInfo) -> None:
        self._capture = capture
        self._target = target
        self.info = info

    @classmethod
    def open(cls, target: int | str, kind: SourceKind, *, stream_id: int) -> VideoCaptureReader:
        if kind is SourceKind.VIDEO_FILE and not Path(target).is_file():
            raise SourceError(f"video file {target} does not exist; check the --source path")
        # Opened before any run can be stopped: a Ctrl-C interrupts the wait itself.
        capture = _open_capture(target, kind, StopFlag())
        if capture is None:
            raise SourceError(_cannot_open(target, kind))
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if kind is SourceKind.URL and count > 0:
            # A file served over HTTP has a length, a live stream has none: read it like a local file, every
            # frame once, instead of reconnecting to replay it when it ends.
            kind = SourceKind.VIDEO_FILE
        info = SourceInfo(
            stream_id=stream_id,
            name=f"camera {target}" if kind is SourceKind.CAMERA else Path(str(target)).name,
            kind=kind,
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=fps if fps > 0 and kind is not SourceKind.CAMERA else None,
            frame_count=count if count > 0 and kind is SourceKind.VIDEO_FILE else None,
        )
        return cls(capture, target, info)

    def read(self) -> Decoded | None:
        ok, image = self._capture.read()
        if not ok:
            return None
        # The decoder's timestamp of the frame just read; a live stream's says nothing of where it is in a file.
        position_ms = self._capture.get(cv2.CAP_PROP_POS_MSEC) if self.info.kind is SourceKind.VIDEO_FILE else None
        return Decoded(as_bgr8(image), position_s=None if position_ms is None else position_ms / 1000)

    def reopen(self, stop: StopFlag) -> bool:
        self._capture.release()
        capture = _open_capture(self._target, self.info.kind, stop)
        if capture is None:
            return False
        self._capture = capture
        return True

    def close(self) -> None:
        self._capture.release()


def _open_capture(target: int | str, kind: SourceKind, stop: StopFlag) -> cv2.VideoCapture | None:
    if kind is SourceKind.URL:
        # FFmpeg's own network timeouts run to minutes; a dead camera should say so within seconds.
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, URL_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, URL_TIMEOUT_MS]
        capture = opened_interruptibly(lambda: cv2.VideoCapture(target, cv2.CAP_FFMPEG, timeouts), stop)
    else:
        capture = cv2.VideoCapture(target)
    if capture.isOpened():
        return capture
    capture.release()
    return None


def opened_interruptibly(open_capture: Callable[[], cv2.VideoCapture], stop: StopFlag) -> cv2.VideoCapture:
    """Opens a capture on a helper thread while the caller waits in short joins, looking at `stop` between them.

    Python runs a signal handler only between bytecodes, and a stop (a Ctrl-C during a reconnect, q in the
    window) must not wait for FFmpeg's network timeout. The helper is a daemon; given up on, it releases the
    capture it opens once its call returns.

    Raises:
        queues.Stopped: `stop` was set first.
    """
    outcome: list[cv2.VideoCapture] = []
    failure: list[Exception] = []
    given_up = threading.Event()
    handing_over = threading.Lock()

    def make_the_call() -> None:
        try:
            capture = open_capture()
        except Exception as error:
            failure.append(error)
            return
        with handing_over:
            if given_up.is_set():
                capture.release()
            else:
                outcome.append(capture)

    helper = threading.Thread(target=make_the_call, name="mnstream-open", daemon=True)
    helper.start()
    while helper.is_alive():
        helper.join(queues.POLL_S)
        if stop.is_set():
            with handing_over:
                if not outcome and not failure:
                    given_up.set()
                    raise queues.Stopped
    if failure:
        raise failure[0]
    return outcome[0]


def _cannot_open(target: int | str, kind: SourceKind) -> str:
    if kind is SourceKind.CAMERA:
        return (
            f"camera {target} cannot be opened: no such device, or another program is using it; "
            "check the connection or try another --camera index"
        )
    if kind is SourceKind.URL:
        return f"stream {target} cannot be opened; check the address, the network and the credentials"
    return f"{target} is not a video OpenCV can decode (corrupt, or an unsupported format); check the file"


class ImageReader:
    """Still images from one file, a folder or a glob, in sorted order.

    An image that cannot be decoded ends the run when it was named on its own, and is skipped with a warning
    when it is one of a folder's or a glob's.
    """

    def __init__(self, paths: list[Path], info: SourceInfo, *, skip_undecodable: bool) -> None:
        self._pending = iter(paths)
        self._skip_undecodable = skip_undecodable
        self.info = info

    @classmethod
    def open(cls, source: str, *, stream_id: int) -> ImageReader:
        path = Path(source)
        if _is_glob(source):
            paths = sorted(Path(p) for p in glob.glob(source, recursive=True))
        elif path.is_dir():
            paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths = [path]
        else:
            raise SourceError(f"image {source} does not exist; check the --source path")
        paths = [p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not paths:
            raise SourceError(f"no images in {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        info = SourceInfo(stream_id, source, SourceKind.IMAGES, width=0, height=0, fps=None, frame_count=len(paths))
        return cls(paths, info, skip_undecodable=not path.is_file())

    def read(self) -> Decoded | None:
        for path in self._pending:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is not None:
                return Decoded(as_bgr8(image), str(path))
            if not self._skip_undecodable:
                raise SourceError(f"{path} is not an image OpenCV can decode; check the file or convert it")
            log.warning(f"skipping {path}: it is not an image OpenCV can decode")
        return None

    def reopen(self, stop: StopFlag) -> bool:
        # Still images that ran out do not come back.
        return False

    def close(self) -> None:
        self._pending = iter(())


class FrameQueue(Protocol):
    """Where a capture thread puts its frames: the muxer, or anything that takes frames the same two ways."""

    def put(self, frame: Frame, stop: StopFlag) -> None:
        """Queues a frame, waiting for room; raises `queues.Stopped` when the run stops first."""
        ...

    def put_latest(self, frame: Frame) -> int:
        """Queues a frame at once, evicting the stream's oldest ones; returns how many were evicted."""
        ...


@dataclass(slots=True)
class _Place:
    """Where a capture thread is in its source: frames read and frames skipped as undecodable."""

    read: int = 0
    undecodable: int = 0

    @property
    def sent(self) -> int:
        """Frames the source has sent; a frame's index, so that frames after a damaged one keep their place."""
        return self.read + self.undecodable


def capture(
    reader: FrameReader,
    frames: FrameQueue,
    stop: StopFlag,
    *,
    prepare: Callable[[np.ndarray], np.ndarray],
    keeps_images: bool,
    observer: Observer,
    reconnect: Reconnect,
    model_ready: threading.Event,
) -> None:
    """Reads until the source ends or `stop` is set, queueing frames by the source's drop policy.

    The model-sized copy is made here so resizing runs in parallel with inference; the image itself goes along only
    where `keeps_images` (a sink reads it). A live source is read from the start and what it sends while the model
    loads is dropped, so the first frame shown is a current one, not one that waited in a network buffer; a file
    waits for the model. A live source that stops delivering is reopened as `reconnect` says; a file that ends has
    ended.
    """
    stream_id = reader.info.stream_id
    drops_oldest = reader.info.drop_policy is DropPolicy.DROP_OLDEST
    place = _Place()
    if not reader.info.kind.is_live:
        while not model_ready.wait(queues.POLL_S):
            if stop.is_set():
                return
    while not stop.is_set():
        started_at = time.monotonic()
        item = _read_decodable(reader, place, observer)
        if item is None and reader.info.kind.is_live:
            item = _reconnected(reader, reconnect, stop, place, observer)
            started_at = time.monotonic()  # the outage is counted as lost time, not as decoding
        if item is None:
            _warn_if_cut_short(reader.info, place.sent)
            return
        captured_at = time.monotonic()
        index = place.sent
        place.read += 1
        if not model_ready.is_set():
            observer.notify(FrameRead(stream_id, index, captured_at))
            observer.notify(FramesDropped(stream_id, 1))
            continue
        image = item.image if keeps_images else None
        frame = Frame(stream_id, index, image, prepare(item.image), captured_at, item.origin, item.position_s)
        decode_ms = (captured_at - started_at) * 1000
        observer.notify(FrameRead(stream_id, index, captured_at, decode_ms, (time.monotonic() - captured_at) * 1000))
        if drops_oldest:
            if evicted := frames.put_latest(frame):
                observer.notify(FramesDropped(stream_id, evicted))
        else:
            frames.put(frame, stop)


def _read_decodable(reader: FrameReader, place: _Place, observer: Observer) -> Decoded | None:
    """The next frame that decodes, counting the undecodable ones skipped before it; None at the end."""
    for failed_reads in range(FAILED_READS_AT_THE_END):
        if (item := reader.read()) is not None:
            if failed_reads:
                if not place.undecodable:
                    log.warning(
                        f"{reader.info.name} sent a frame that cannot be decoded; such frames are skipped and "
                        "counted as undecodable in the summary"
                    )
                place.undecodable += failed_reads
                observer.notify(FramesUndecodable(reader.info.stream_id, failed_reads))
            return item
    return None


def _warn_if_cut_short(info: SourceInfo, frames_sent: int) -> None:
    # One frame of slack: containers often announce a frame more than they decode.
    if info.kind is SourceKind.VIDEO_FILE and info.frame_count and frames_sent < info.frame_count - 1:
        log.warning(
            f"{info.name} ended after {frames_sent} of the {info.frame_count} frames its header announces; "
            "the file may be truncated or damaged, and everything readable was processed"
        )


def _reconnected(
    reader: FrameReader, reconnect: Reconnect, stop: StopFlag, place: _Place, observer: Observer
) -> Decoded | None:
    """Reopens a live source with growing delays until it delivers again; its first frame back, or None when the
    attempts run out or the run stops. A source that opens but sends nothing has not come back.
    """
    name, stream_id = reader.info.name, reader.info.stream_id
    lost_at = time.monotonic()
    observer.notify(SourceLost(stream_id, lost_at))
    for attempt, delay_s in enumerate(reconnect.delays(), start=1):
        log.warning(f"{name} stopped delivering; reconnecting in {delay_s:.1f} s ({attempt} of {reconnect.attempts})")
        if not _sleep_unless_stopped(delay_s, stop):
            return None
        if reader.reopen(stop) and (item := _read_decodable(reader, place, observer)) is not None:
            back_at = time.monotonic()
            observer.notify(SourceBack(stream_id, back_at, back_at - lost_at))
            log.warning(f"{name} is back after {back_at - lost_at:.1f} s")
            return item
    if reconnect.attempts:
        log.error(f"{name} did not come back after {reconnect.attempts} attempts; finishing the run")
    return None


def _sleep_unless_stopped(seconds: float, stop: StopFlag) -> bool:
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if stop.is_set():
            return False
        time.sleep(min(remaining, queues.POLL_S))
    return not stop.is_set()
