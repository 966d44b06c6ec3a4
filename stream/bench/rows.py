"""The rows, each measured alone in a child process: engine ceiling, seed baseline, pipeline, MediaPipe, live."""

from __future__ import annotations

import dataclasses
import importlib.abc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from rich.console import Console

from stream.bench.instruments import (
    FrameTimes,
    SpawnClock,
    StageTimer,
    limited,
    peak_rss_mb,
    pipeline_stage_means,
    throughput_result,
)
from stream.bench.live import live_row
from stream.bench.results import ModelFormat, RowResult, RowStatus, skipped
from stream.cache import CACHE_ENV
from stream.config import Config
from stream.engines import PIXEL_SCALES
from stream.events import Observers
from stream.metrics import RunStats
from stream.queues import StopFlag
from stream.recognizer import Recognizer
from stream.sources import FrameReader, Probed, open_reader, open_readers
from stream.types import Frame, SourceError, first_line
from stream.wiring import assemble, sinks_for

if TYPE_CHECKING:
    from stream.bench.layouts import LayoutTimer

WARM_UP_S = 1.0
"""How long the ceiling runs batches before it is timed: past the first call's compiling and allocation."""


@dataclasses.dataclass(frozen=True, slots=True)
class RowOptions:
    """What a row needs besides the config."""

    frames: int | None
    """Frames of the video each file row reads; None for all."""
    clock: SpawnClock
    live_s: float
    live_fps: float


def measure(row: str, config: Config, options: RowOptions) -> RowResult:
    """Measures one row in this process, which should have run nothing else.

    Args:
        row: One of `results.ROWS`.
        config: The run's config: source, model, batching; headless, no output.
        options: Frame limit, spawn clock and the live row's pace.

    Returns:
        The row, with the wall time, peak memory and TensorFlow import that every measured row reports.
    """
    result = _MEASURES[row](config, options)
    if not result.ok:
        return result
    return dataclasses.replace(
        result,
        wall_s=options.clock.since_spawn(time.monotonic()),
        peak_rss_mb=peak_rss_mb(),
        tensorflow_imported="tensorflow" in sys.modules,
    )


def _ceiling(config: Config, options: RowOptions) -> RowResult:
    """Recognition alone, on frames decoded and resized beforehand: what the engine can do at best."""
    recognizer = Recognizer.from_config(config)
    try:
        timer = StageTimer()
        frames = _source_frames(config, options, recognizer, timer)
        return _ceiling_result("ceiling", recognizer, frames, config, timer)
    finally:
        recognizer.close()


CALIBRATION_FRAMES = 100
"""The video frames that calibrate the int8 row's model: the first ones, as a user's own calibration set would be."""
AGREEMENT_STRIDE = 4
"""Every 4th frame is compared with the float32 model: neighbouring frames of a video agree anyway."""


def _quantized(row: str, config: Config, options: RowOptions) -> RowResult:
    """The ceiling of the same Keras model exported as float16 or int8 (calibrated on the video's first frames),
    and how often its top-1 is the float32 model's.
    """
    if ModelFormat.of(config.model) is ModelFormat.TFLITE:
        return skipped(row, "the float16 and int8 rows export the Keras model; run with a Keras model")
    # Imported here: exporting needs TensorFlow, which this row's process may load.
    from stream.engines.conversion import INPUT_RANGE, Quantization, to_tflite
    from stream.engines.keras import KerasEngine
    from stream.engines.tflite import TFLiteEngine
    from stream.export import calibration_frames

    keras_engine = KerasEngine.from_config(config.model)
    try:
        calibration = limited(open_reader(config.input.streams[0]), CALIBRATION_FRAMES)
        try:
            frames = calibration_frames(calibration, keras_engine.input_size) if row == "int8" else None
            model = to_tflite(keras_engine, Quantization(row), frames)
        finally:
            calibration.close()
        classes = keras_engine.classes
    finally:
        keras_engine.close()
    engine = TFLiteEngine.load(model, classes, name=row, preprocess=INPUT_RANGE, threads=config.model.threads)
    recognizer = Recognizer.around(engine, config)
    try:
        timer = StageTimer()
        inputs = _source_frames(config, options, recognizer, timer)
        result = _ceiling_result(row, recognizer, inputs, config, timer)
        sample = inputs[::AGREEMENT_STRIDE]
        top1 = _top1(recognizer, sample)
    finally:
        recognizer.close()
    reference = Recognizer.from_config(
        dataclasses.replace(config, model=dataclasses.replace(config.model, runtime="litert"))
    )
    try:
        agreement = float(np.mean(_top1(reference, sample) == top1))
    finally:
        reference.close()
    return dataclasses.replace(result, top1_agreement=agreement)


def _top1(recognizer: Recognizer, frames: list[Frame]) -> np.ndarray:
    """Each frame's own best class (unsmoothed), -1 where none passes the threshold."""
    predictions = recognizer.recognize(frames)
    return np.array([prediction.labels[0].class_index if prediction.labels else -1 for prediction in predictions])


def _source_frames(config: Config, options: RowOptions, recognizer: Recognizer, timer: StageTimer) -> list[Frame]:
    """The source's frames, decoded and prepared for the model ahead of the timing.

    Each frame carries its model input as its image too: the recognizer reads only the model input, and a whole
    video of full-size frames would not fit in memory.
    """
    reader = limited(open_reader(config.input.streams[0]), options.frames)
    frames = []
    try:
        for index, image in enumerate(_images(reader, timer)):
            with timer("preprocess"):
                pixels = recognizer.prepare(image)
            frames.append(Frame(0, index, pixels, pixels, captured_at=time.monotonic()))
    finally:
        reader.close()
    if not frames:
        raise SourceError(f"{reader.info.name} has no frames to measure")
    return frames


CEILING_CHUNK = 96
"""Frames each way of running the model takes in turn: close enough in time that a shared machine's slow spells
hit them alike, and few enough to hold as float32 model inputs (60 MB at 224x224)."""


ENGINE_LAYOUT = "the engine, as the pipeline calls it"


def _ceiling_result(
    row: str, recognizer: Recognizer, frames: list[Frame], config: Config, timer: StageTimer
) -> RowResult:
    """The fastest way found to run the recognizer's model on `frames`.

    A LiteRT model is also run without the engine, in every thread layout an engine could use (`layouts`), taking
    turns with the engine chunk by chunk; the ceiling is the fastest of them, and every layout's rate is kept.
    """
    batch_size = config.batching.batch_size
    _warm_up(recognizer, frames[:batch_size])
    timers = _layout_timers(recognizer, config, frames[0].model_input.shape)
    try:
        engine_s = 0.0
        for start in range(0, len(frames), CEILING_CHUNK):
            chunk = frames[start : start + CEILING_CHUNK]
            engine_s += _time_batches(recognizer, chunk, batch_size, timer)
            if timers:
                inputs = recognizer.engine.model_inputs(np.stack([frame.model_input for frame in chunk]))
                for layout_timer in timers:
                    layout_timer.time(inputs)
    finally:
        for layout_timer in timers:
            layout_timer.close()
    rates = {ENGINE_LAYOUT: len(frames) / engine_s}
    rates.update({each.layout.name: each.frames_per_s for each in timers if each.frames_per_s})
    return RowResult(
        row,
        RowStatus.OK,
        frames=len(frames),
        frames_per_s=max(rates.values()),
        batch_size=batch_size,
        stage_ms=timer.means_ms(),
        layouts_fps=rates if timers else {},
    )


def _layout_timers(recognizer: Recognizer, config: Config, frame_shape: tuple[int, ...]) -> list[LayoutTimer]:
    """A warmed-up timer for each layout the recognizer's LiteRT model can run in; none for a TensorFlow model."""
    # Imported here: a Keras model on TensorFlow's kernels has no LiteRT layouts to try.
    from stream.bench.layouts import LayoutTimer, layouts
    from stream.engines.tflite import TFLiteEngine

    engine = recognizer.engine
    if not isinstance(engine, TFLiteEngine):
        return []
    cores = config.model.threads or os.cpu_count() or 1
    warm_up = engine.model_inputs(np.zeros((cores * config.batching.batch_size, *frame_shape), np.uint8))
    timers = []
    for layout in layouts(cores, config.batching.batch_size):
        try:
            layout_timer = LayoutTimer(engine.model, layout, frame_shape=frame_shape)
        except (RuntimeError, ValueError):
            continue  # a fixed batch (the coral models) takes one frame a call only
        layout_timer.warm_up(warm_up)
        timers.append(layout_timer)
    return timers


def _time_batches(recognizer: Recognizer, frames: list[Frame], batch_size: int, timer: StageTimer) -> float:
    """Seconds the recognizer takes for `frames`, a batch a call."""
    started_at = time.monotonic()
    for start in range(0, len(frames), batch_size):
        with timer("inference"):
            recognizer.recognize(frames[start : start + batch_size])
    return time.monotonic() - started_at


def _warm_up(recognizer: Recognizer, batch: list[Frame]) -> None:
    deadline = time.monotonic() + WARM_UP_S
    recognizer.recognize(batch)
    while time.monotonic() < deadline:
        recognizer.recognize(batch)


def _images(reader: FrameReader, timer: StageTimer) -> Iterator[np.ndarray]:
    """The reader's frames, each decode timed."""
    while True:
        started_at = time.monotonic()
        item = reader.read()
        if item is None:
            return
        timer.record("decode", started_at)
        yield item.image


def _baseline(config: Config, options: RowOptions) -> RowResult:
    """What a first script does: per frame read, resize, `model.predict`, top-5, draw; one thread, no batching."""
    if ModelFormat.of(config.model) is ModelFormat.TFLITE:
        return skipped("baseline", "the seed baseline is a Keras model's predict() per frame; run with a Keras model")
    # The model, its pixel scaling and its class names as the engine loads them; the loop is the seed's.
    from stream.engines.keras import KerasEngine

    engine = KerasEngine.from_config(config.model)
    recognizer = Recognizer.around(engine, config)
    scale, offset = PIXEL_SCALES[engine.preprocess]
    timer, times = StageTimer(), FrameTimes()
    reader = limited(open_reader(config.input.streams[0]), options.frames)
    try:
        started_at = time.monotonic()
        for image in _images(reader, timer):
            with timer("preprocess"):
                pixels = recognizer.prepare(image).astype(np.float32) * scale + offset
            with timer("inference"):
                scores = engine.model.predict(pixels[None], verbose=0)[0]
            with timer("postprocess"):
                labels = recognizer.labels(scores)
            with timer("overlay"):
                for line, label in enumerate(labels):
                    text = f"{label.name} {label.score:.2f}"
                    cv2.putText(image, text, (10, 30 + 30 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
            times.tick()
    finally:
        reader.close()
        recognizer.close()
    return throughput_result(
        "baseline", times, since=started_at, clock=options.clock, batch_size=1, stage_ms=timer.means_ms()
    )


def _pipeline(row: str, config: Config, options: RowOptions, *, writes_video: bool) -> RowResult:
    """The real pipeline from its config, headless, optionally writing the annotated video to a scratch file."""
    with tempfile.TemporaryDirectory(prefix="mnstream-bench-") as folder:
        if writes_video:
            output = dataclasses.replace(config.output, path=str(Path(folder) / "annotated.mp4"))
            config = dataclasses.replace(config, output=output)
        stop = StopFlag()
        readers = [limited(reader, options.frames) for reader in open_readers(config.input)]
        sinks = sinks_for(config, [reader.info for reader in readers], console=Console(quiet=True), stop=stop)
        stats, times = RunStats(), FrameTimes()
        sources = [Probed(reader) for reader in readers]
        assemble(config, sources, sinks, observer=Observers([stats, times]), stop=stop).run()
    return throughput_result(
        row,
        times,
        since=stats.started_at,
        clock=options.clock,
        batch_size=config.batching.batch_size,
        stage_ms=pipeline_stage_means(stats),
    )


class _WithoutTensorFlow(importlib.abc.MetaPathFinder):
    """Makes TensorFlow look uninstalled.

    MediaPipe imports TensorFlow whenever it can, for documentation decorators and file access it does not need
    for a local model; its users without TensorFlow never pay those seconds and hundreds of megabytes, so the
    comparison should not make it pay them either.
    """

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def _mediapipe(config: Config, options: RowOptions) -> RowResult:
    """MediaPipe's ImageClassifier in VIDEO mode on the same .tflite: decode, convert, classify, per frame."""
    if ModelFormat.of(config.model) is not ModelFormat.TFLITE:
        return skipped("mediapipe", "MediaPipe's ImageClassifier runs .tflite models; run with --model FILE.tflite")
    model = config.model.model
    sys.meta_path.insert(0, _WithoutTensorFlow())
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError:
        return skipped("mediapipe", "mediapipe is not installed (pip install mediapipe)")
    classifier_options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=model),
        running_mode=vision.RunningMode.VIDEO,
        max_results=config.model.top_k,
    )
    try:
        classifier = vision.ImageClassifier.create_from_options(classifier_options)
    except (RuntimeError, ValueError) as error:
        return skipped(
            "mediapipe", f"MediaPipe cannot load {Path(model).name}: {first_line(error)} (it needs TFLite metadata)"
        )
    timer, times = StageTimer(), FrameTimes()
    reader = limited(open_reader(config.input.streams[0]), options.frames)
    # VIDEO mode wants each frame's timestamp, strictly increasing: the file's own timing.
    frame_ms = 1000 / (reader.info.fps or 30.0)
    try:
        with classifier:
            started_at = time.monotonic()
            for index, image in enumerate(_images(reader, timer)):
                with timer("preprocess"):
                    frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
                with timer("inference"):
                    classifier.classify_for_video(frame, round(index * frame_ms))
                times.tick()
    finally:
        reader.close()
    return throughput_result(
        "mediapipe", times, since=started_at, clock=options.clock, batch_size=1, stage_ms=timer.means_ms()
    )


def _tensorflow(config: Config, options: RowOptions) -> RowResult:
    """The headless pipeline with the Keras model on TensorFlow's kernels: what LiteRT is measured against."""
    if ModelFormat.of(config.model) is ModelFormat.TFLITE:
        return skipped("tensorflow", "a .tflite model runs on LiteRT only; run with a Keras model")
    model = dataclasses.replace(config.model, runtime="tensorflow")
    return _pipeline("tensorflow", dataclasses.replace(config, model=model), options, writes_video=False)


def _cold(config: Config, options: RowOptions) -> RowResult:
    """The headless pipeline on an empty model cache: a Keras model's first run, which converts it to LiteRT."""
    if ModelFormat.of(config.model) is not ModelFormat.COMPILED:
        return skipped(
            "cold", "only a Keras model on LiteRT is converted at its first run: a Keras model, --runtime litert"
        )
    with tempfile.TemporaryDirectory(prefix="mnstream-bench-cache-") as folder:
        # This process measures this row only: the folder is its cache for the rest of its life.
        os.environ[CACHE_ENV] = folder
        return _pipeline("cold", config, options, writes_video=False)


def _live(config: Config, options: RowOptions) -> RowResult:
    return live_row(config, duration_s=options.live_s, fps=options.live_fps, clock=options.clock)


_MEASURES: dict[str, Callable[[Config, RowOptions], RowResult]] = {
    "ceiling": _ceiling,
    "float16": lambda config, options: _quantized("float16", config, options),
    "int8": lambda config, options: _quantized("int8", config, options),
    "tensorflow": _tensorflow,
    "baseline": _baseline,
    "headless": lambda config, options: _pipeline("headless", config, options, writes_video=False),
    "video": lambda config, options: _pipeline("video", config, options, writes_video=True),
    "cold": _cold,
    "mediapipe": _mediapipe,
    "live": _live,
}
