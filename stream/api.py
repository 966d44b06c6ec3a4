"""mnstream from Python: a run with callbacks, a generator of predictions, and the recognizer on your own images."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
from rich.console import Console

from stream.config import SECTIONS, Config, OutputConfig, StreamConfig, load_config
from stream.events import Event, LabelChanged, Observers, ShownLabels
from stream.metrics import RunStats
from stream.pipeline import Pipeline
from stream.queues import POLL_S
from stream.recognizer import Recognizer
from stream.sources import as_bgr8
from stream.types import ConfigError, Frame, Prediction, SourceInfo, UsageError
from stream.wiring import pipeline_from_config

Source = int | str | os.PathLike[str]
"""A camera index, or a video file, stream URL, image, folder of images or glob."""
OnPrediction = Callable[[Frame, Prediction], object]
OnEvent = Callable[[Event], object]

_RUN_OUTPUTS = {"video": "output.path", "window": "output.headless", "jsonl": "output.jsonl"}
"""The sinks `Run` takes as arguments of its own, and the config keys they set."""
_LIBRARY_DEFAULTS: dict[str, object] = {"output.headless": True}
"""A library opens no window unless asked; the command line opens one unless told not to."""


class Run:
    """A pipeline run: sources through the model into your callbacks and the sinks you choose.

    `start` runs it on a thread of its own and returns; `run` runs it on the calling thread until it ends (use it
    for `window=True`: some platforms draw windows on the main thread only). `stop` ends it from any thread, a
    callback included; `join` waits for the end and raises what went wrong. A callback that raises stops the run,
    and `join` raises that exception. Afterwards `stats` holds the run's frame counts and latencies.

    Example:
        >>> run = stream.Run("clip.mp4", on_prediction=print, video="annotated.mp4")  # doctest: +SKIP
        >>> run.start(); run.join()  # doctest: +SKIP
    """

    config: Config
    """The validated configuration of the run."""
    stats: RunStats
    """Frames read, inferred, written and dropped per stream, and each stage's latency; complete after `join`."""

    def __init__(
        self,
        source: Source | Sequence[Source] | None = None,
        *,
        on_prediction: OnPrediction | None = None,
        on_event: OnEvent | None = None,
        window: bool | None = None,
        video: str | os.PathLike[str] | None = None,
        jsonl: str | os.PathLike[str] | None = None,
        config: str | os.PathLike[str] | None = None,
        **options: object,
    ) -> None:
        """Validates the options; nothing opens until `start` or `run`.

        Args:
            source: What to read, or a list of them for several streams; None for the config file's streams.
            on_prediction: Called with each frame (its `image` as captured, BGR, yours to keep) and its prediction,
                in order per stream, on the run's thread, until `stop` is called. A slow callback slows a file down
                (no frame is lost) and makes a live source drop its oldest frames.
            on_event: Called with each `stream.events` event (`SourceLost`, `SourceBack`, `LabelChanged`,
                `StreamEnded`, `RunEnded`, ...), on the thread it happens on: keep it quick.
            window: Show the annotated frames in an OpenCV window (q or Esc stops the run); off unless the config
                file turns it on.
            video: Write the annotated video to this file (`.mp4`, `.webm`, `.mkv`, `.mov`, `.avi`).
            jsonl: Write one JSON line per frame to this file (schema: docs/jsonl.md).
            config: A TOML file with the sections of configs/default.toml; the other arguments override it.
            **options: Any option of configs/default.toml by its key without the section: `model`, `top_k`,
                `threshold`, `allow`, `deny`, `half_life`, `batch_size`, `overwrite`, `codec`, ...

        Raises:
            ConfigError: An unknown option, or a value of the wrong type or range, named as given.
        """
        given = {"video": video, "jsonl": jsonl, "window": None if window is None else not window}
        outputs = {_RUN_OUTPUTS[name]: value for name, value in given.items() if value is not None}
        settings = configure(source, config, options, sections=tuple(SECTIONS), outputs=outputs)
        self._prepare(settings, on_prediction=on_prediction, on_event=on_event, console=None)

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        on_prediction: OnPrediction | None = None,
        on_event: OnEvent | None = None,
        console: Console | None = None,
    ) -> Run:
        """A run of a ready `Config`, as the command line builds it.

        Args:
            config: The run's sources, model, batching, smoothing and sinks.
            on_prediction: As for `Run`.
            on_event: As for `Run`.
            console: Where the progress bar, the labels of a headless run or the top-k lines of still images are
                printed, as the command line does; None prints nothing.
        """
        run = cls.__new__(cls)
        run._prepare(config, on_prediction=on_prediction, on_event=on_event, console=console)
        return run

    def _prepare(
        self, config: Config, *, on_prediction: OnPrediction | None, on_event: OnEvent | None, console: Console | None
    ) -> None:
        self.config = config
        self.stats = RunStats()
        self._callbacks = _Callbacks(self.stop)
        self._on_prediction = on_prediction
        self._on_event = on_event
        self._console = console
        self._pipeline: Pipeline | None = None
        self._thread: threading.Thread | None = None
        self._stop_asked = False
        self._ended = threading.Event()
        self._error: BaseException | None = None

    @property
    def sources(self) -> list[SourceInfo]:
        """What each stream is (name, kind, size, FPS), in stream order, once the run has started."""
        return [] if self._pipeline is None else self._pipeline.infos

    def start(self) -> None:
        """Opens the sources and the outputs on this thread, then runs on a thread of its own.

        Raises:
            UsageError: A source cannot be opened, an output cannot be written or exists without `overwrite=True`,
                or the options do not fit the sources (`SourceError`, `ModelError` and `ConfigError` are kinds of
                it). Nothing is left open.
            RuntimeError: The run was started before.
        """
        self._open()
        self._thread = threading.Thread(target=self._run_pipeline, name="mnstream-run", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Opens the sources and the outputs and runs on this thread until the run ends.

        Raises:
            UsageError: As `start`.
            MnstreamError: A stage failed (a model that cannot load, a full disk).
            Exception: Whatever a callback raised.
            KeyboardInterrupt: Interrupted; the outputs are closed (the video is playable) first.
        """
        self._open()
        self._run_pipeline()
        self.join()

    def stop(self) -> None:
        """Asks the run to finish: the sources stop, the frames in flight reach the outputs, which are closed;
        `on_prediction` is not called again (a call in progress on the run's thread finishes).

        Safe from any thread, a callback or a signal handler; returns at once (`join` waits). Before `start`, the
        run ends as soon as it has started.
        """
        self._stop_asked = True
        if self._pipeline is not None:
            self._pipeline.stop()

    def join(self, timeout: float | None = None) -> None:
        """Waits until the run has ended, or `timeout` seconds have passed (see `running`); the first `join` after
        the end raises what ended it, later ones return.

        Raises:
            MnstreamError: A stage failed.
            Exception: Whatever a callback raised, as it was raised.
            RuntimeError: The run has not been started: there is nothing to wait for.
        """
        if self._pipeline is None:
            raise RuntimeError("this run has not been started; call start() before join()")
        if self._thread is not None:
            self._thread.join(timeout)
        if self._ended.is_set() and self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def running(self) -> bool:
        """Whether the run has started and not yet ended."""
        return self._pipeline is not None and not self._ended.is_set()

    def _open(self) -> None:
        if self._pipeline is not None:
            raise RuntimeError("this run has been started already; make a new Run")
        watching = (
            [self.stats] if self._on_event is None else [self.stats, _EventCallback(self._on_event, self._callbacks)]
        )
        observer = Observers(watching)
        sink = _PredictionSink(self._on_prediction, observer, self._callbacks, stopping=lambda: self._stop_asked)
        self._pipeline = pipeline_from_config(self.config, console=self._console, observer=observer, sinks=[sink])
        if self._stop_asked:
            self._pipeline.stop()

    def _run_pipeline(self) -> None:
        try:
            self._pipeline.run()
        except Exception as error:
            self._error = error
        finally:
            # A callback's own exception stops the run without failing a stage; it is the one the caller sees.
            self._error = self._callbacks.error or self._error
            self._ended.set()


class _Callbacks:
    """Calls the user's functions; the first exception one raises is kept and stops the run."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def call(self, function: Callable[..., object], *args: object) -> None:
        if self.error is not None:
            return
        try:
            function(*args)
        except BaseException as error:
            with self._lock:
                self.error = self.error or error
            self._stop()


class _EventCallback:
    """The user's `on_event`, as an observer of the run."""

    def __init__(self, on_event: OnEvent, callbacks: _Callbacks) -> None:
        self._on_event = on_event
        self._callbacks = callbacks

    def notify(self, event: Event) -> None:
        self._callbacks.call(self._on_event, event)


class _PredictionSink:
    """The last sink: tells the observers where a stream's shown label changes, then calls `on_prediction` until the
    run is asked to stop.
    """

    needs_overlay = False

    def __init__(
        self,
        on_prediction: OnPrediction | None,
        observer: Observers,
        callbacks: _Callbacks,
        *,
        stopping: Callable[[], bool],
    ) -> None:
        self._on_prediction = on_prediction
        # Without a callback no one sees the frames as captured, and the overlay is drawn on them without a copy.
        self.reads_image = on_prediction is not None
        self._observer = observer
        self._callbacks = callbacks
        self._stopping = stopping
        self._shown = ShownLabels()

    def write(self, frame: Frame, prediction: Prediction) -> None:
        if self._shown.changed(prediction):
            self._observer.notify(LabelChanged(frame.stream_id, frame.index, time.monotonic(), prediction.smoothed))
        # The frames still in flight reach the files, but a callback that said stop is not called again.
        if self._on_prediction is not None and not self._stopping():
            self._callbacks.call(self._on_prediction, frame, prediction)

    def close(self) -> None:
        pass


def frames(
    source: Source | Sequence[Source] | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    **options: object,
) -> Iterator[tuple[Frame, Prediction]]:
    """Every frame of the source with its prediction, in order, as the model gets through them.

    The run starts with the first `next` and ends with the source, or when the loop ends early (a `break`, an
    exception, the generator closed or garbage-collected): then everything it opened is closed and its threads
    have ended. A file loses no frame however slow the loop; a live source drops its oldest meanwhile.

    Args:
        source: What to read, or a list of them (their frames interleave; `Prediction.stream_id` tells them
            apart); None for the config file's streams.
        config: A TOML file with the sections of configs/default.toml; `options` override it. Its [output]
            section is not used.
        **options: As for `Run`, but no outputs: `model`, `top_k`, `threshold`, `allow`, `deny`, `half_life`,
            `batch_size`, ...

    Yields:
        (frame, prediction): the frame as captured (`frame.image`, BGR, yours to keep) and what the model made of
        it.

    Raises:
        ConfigError: An unknown option, or a value of the wrong type or range, named as given.
        UsageError: A source that cannot be opened (`SourceError`) or a model that cannot be used (`ModelError`).
        MnstreamError: A stage failed while running.
    """
    configured = configure(source, config, options, sections=("input", "model", "batching", "smoothing"))
    settings = dataclasses.replace(configured, output=OutputConfig(headless=True))
    results: queue.Queue[tuple[Frame, Prediction]] = queue.Queue(maxsize=settings.input.queue_size)
    closing = threading.Event()

    def hand_over(frame: Frame, prediction: Prediction) -> None:
        while not closing.is_set():
            with contextlib.suppress(queue.Full):
                results.put((frame, prediction), timeout=POLL_S)
                return

    run = Run.from_config(settings, on_prediction=hand_over)
    run.start()
    try:
        while True:
            try:
                yield results.get(timeout=POLL_S)
            except queue.Empty:
                # Once the run has ended nothing more is put, so an empty queue then is the end.
                if not run.running and results.empty():
                    break
        run.join()
    finally:
        closing.set()
        run.stop()
        # Ended early: the caller has stopped listening, and the run's own error, if any, has no one to go to.
        with contextlib.suppress(Exception):
            run.join()


class Classifier:
    """The recognizer alone: classifies images you already have, with no thread, source or sink.

    Predictions are those of still images (`Prediction.smoothed` is the top label; nothing is averaged across
    calls). Use it from one thread at a time; `close` it (or use `with`) to free the model.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        config: str | os.PathLike[str] | None = None,
        **options: object,
    ) -> None:
        """Loads the model.

        Args:
            model: `mobilenet`, `mobilenet_v2` (the default), `mobilenet_v3_small`, `mobilenet_v3_large`, or a
                `.keras`, `.h5` or `.tflite` file.
            config: A TOML file; only its [model] section is used, and the arguments override it.
            **options: The [model] options of configs/default.toml: `top_k`, `threshold`, `allow`, `deny`,
                `weights`, `labels`, `preprocess`, `runtime`, `threads`, ...

        Raises:
            ConfigError: An unknown option, or a value of the wrong type or range, named as given.
            ModelError: The model, its weights or its labels cannot be used.
            UsageError: `allow` or `deny` names no class of the model.
        """
        given = options if model is None else {**options, "model": model}
        settings = configure(None, config, given, sections=("model",))
        self._recognizer = Recognizer.from_config(settings, still_streams=[0])
        self._classified = 0

    @property
    def class_names(self) -> tuple[str, ...]:
        """The model's class names, by class index."""
        return tuple(self._recognizer.classes.names)

    def classify(self, image: np.ndarray) -> Prediction:
        """The prediction for one image.

        Args:
            image: uint8 (or 16-bit) BGR as OpenCV reads it, gray or BGRA; any size (it is resized whole, not
                cropped). For RGB, pass `image[..., ::-1]`.

        Raises:
            ValueError: Not an image of a shape or type above.
        """
        return self.classify_batch([image])[0]

    def classify_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """The predictions for several images, in order, from one model call.

        Raises:
            ValueError: One is not an image (see `classify`).
        """
        now = time.monotonic()
        batch = []
        for image in images:
            batch.append(_frame(image, self._classified, now, self._recognizer))
            self._classified += 1
        return self._recognizer.recognize(batch) if batch else []

    def close(self) -> None:
        """Frees the model; the classifier cannot be used after."""
        self._recognizer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _frame(image: np.ndarray, index: int, now: float, recognizer: Recognizer) -> Frame:
    if (
        not isinstance(image, np.ndarray)
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] not in (1, 3, 4))
        or image.size == 0
    ):
        raise ValueError(
            f"expected a non-empty HxW or HxWxC image array with 1, 3 or 4 channels, "
            f"got {getattr(image, 'shape', type(image))}"
        )
    try:
        bgr = as_bgr8(image)
    except UsageError as error:
        raise ValueError(str(error)) from None
    return Frame(0, index, bgr, recognizer.prepare(bgr), now)


def configure(
    source: Source | Sequence[Source] | None,
    config: str | os.PathLike[str] | None,
    options: dict[str, object],
    *,
    sections: tuple[str, ...],
    outputs: dict[str, object] | None = None,
) -> Config:
    """The config that keyword options (keys of configs/default.toml without their section) and a file give.

    Args:
        source: The streams, over the file's.
        config: A TOML file, or None.
        options: Option name -> value; paths may be `Path`s.
        sections: The sections whose options the caller takes.
        outputs: Dotted output keys the caller sets itself.

    Raises:
        ConfigError: An unknown option, or a value of the wrong type or range, named as the caller gave it.
    """
    keys = {
        field.name: f"{section}.{field.name}"
        for section in sections
        for field in dataclasses.fields(SECTIONS[section])
        if f"{section}.{field.name}" not in ("input.streams", *_RUN_OUTPUTS.values())
    }
    unknown = sorted(set(options) - set(keys))
    if unknown:
        raise ConfigError(f"unknown option '{unknown[0]}' (options: {', '.join(sorted(keys))})")
    overrides = {keys[name]: _plain(value) for name, value in options.items()}
    overrides |= {key: _plain(value) for key, value in (outputs or {}).items()}
    names = {key: name for name, key in keys.items()} | {key: name for name, key in _RUN_OUTPUTS.items()}
    names["input.streams"] = "source"
    try:
        if source is not None:
            overrides["input.streams"] = _streams(source)
        settings = load_config(None if config is None else Path(config), overrides, defaults=_LIBRARY_DEFAULTS)
    except ConfigError as error:
        # Named as the caller gave it: `top_k`, not `model.top_k`; a key from the file keeps the file's name.
        if error.key in names and (error.key in overrides or error.key == "input.streams" and source is not None):
            raise error.naming(names[error.key]) from None
        raise
    if not settings.input.streams and "input" in sections:
        raise UsageError("nothing to read: give a source (a camera index, or a file, URL, folder or glob)")
    return settings


def _streams(source: Source | Sequence[Source]) -> tuple[StreamConfig, ...]:
    sources = [source] if isinstance(source, (int, str, os.PathLike)) else list(source)
    streams = []
    for item in sources:
        if isinstance(item, bool) or not isinstance(item, (int, str, os.PathLike)):
            rule = f"each is a camera index, or a path or URL; got {item!r}"
            raise ConfigError(f"input.streams: {rule}", key="input.streams", rule=rule)
        streams.append(StreamConfig(camera=item) if isinstance(item, int) else StreamConfig(source=os.fspath(item)))
    return tuple(streams)


def _plain(value: object) -> object:
    """A `Path` as the string a config holds."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value
