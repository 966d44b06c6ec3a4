"""Owns the threads, the queues, the stop event and the errors: capture -> batched inference -> overlay -> sinks."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Console

from stream import queues
from stream.batching import collect_batch
from stream.config import Config
from stream.engines import Engine, create_engine
from stream.labels import top_labels
from stream.metrics import RunStats
from stream.overlay import draw_overlay
from stream.queues import EndOfStream, StopFlag
from stream.sinks import ConsoleSink, QuitRequested, Sink, TopKPrinter, VideoFileSink, WindowSink
from stream.sources import FrameReader, Reconnect, capture, model_input, open_reader
from stream.types import Frame, MnstreamError, Prediction, SourceKind, UsageError

JOIN_TIMEOUT_S = 2.0
"""How long shutdown waits for a thread; a reader stuck inside a driver call is abandoned (threads are daemons)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The knobs of a run that the pipeline itself turns."""

    batch_size: int
    max_wait_ms: float
    queue_size: int
    top_k: int
    threshold: float
    reconnect: Reconnect

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(
            batch_size=config.batching.batch_size,
            max_wait_ms=config.batching.max_wait_ms,
            queue_size=config.input.queue_size,
            top_k=config.model.top_k,
            threshold=config.model.threshold,
            reconnect=Reconnect(config.input.reconnect_attempts, config.input.reconnect_delay_s),
        )


DEFAULT_LIMITS = Limits.from_config(Config())


class StageFailed(MnstreamError):
    """An unexpected exception in a pipeline thread; its cause carries the traceback for --debug."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage} failed: {type(error).__name__}: {error}")


class Pipeline:
    """One source through one engine into sinks.

    Threads: the capture thread owns the reader, the inference worker owns the engine (it creates, warms up,
    calls and closes it), and the thread that calls `run` draws and writes to the sinks, as OpenCV windows need.
    """

    def __init__(
        self,
        reader: FrameReader,
        engine_factory: Callable[[], Engine],
        sinks: Sequence[Sink],
        *,
        limits: Limits = DEFAULT_LIMITS,
        stop: StopFlag | None = None,
    ) -> None:
        self.reader = reader
        self.stats = RunStats()
        self._engine_factory = engine_factory
        self._sinks = list(sinks)
        self._limits = limits
        self._stop = stop or StopFlag()
        self._engine_ready = threading.Event()
        self._input_size: tuple[int, int] = (0, 0)
        self._errors: list[tuple[str, BaseException]] = []
        self._frames: queue.Queue[Frame | EndOfStream] = queue.Queue(maxsize=limits.queue_size)
        self._results: queue.Queue[tuple[Frame, Prediction] | EndOfStream] = queue.Queue(maxsize=limits.queue_size)

    @classmethod
    def from_config(cls, config: Config, *, console: Console) -> Pipeline:
        """Opens the source and the sinks the config asks for; the model loads when `run` starts.

        Raises:
            UsageError: The source cannot be opened or the options do not fit it.
        """
        reader = open_reader(config.input)
        stop = StopFlag()
        try:
            sinks = _sinks_for(config, reader, console, stop)
        except BaseException:
            reader.close()
            raise
        return cls(reader, lambda: create_engine(config.model), sinks, limits=Limits.from_config(config), stop=stop)

    def stop(self) -> None:
        """Asks every stage to finish; `run` then closes the sinks and returns. Safe to call from a signal handler."""
        self._stop.set()

    def run(self) -> RunStats:
        """Runs to the end of the source, a quit from the window, or an error; always closes the sinks.

        Raises:
            MnstreamError: A stage failed (the first error, once), sinks included.
            KeyboardInterrupt: Interrupted; the sinks are closed (the video is playable) before it propagates.
        """
        worker = self._start("inference", self._infer, downstream=self._results)
        capturer: threading.Thread | None = None
        try:
            while not self._engine_ready.wait(queues.POLL_S):
                if self._stop.is_set():
                    return self.stats
            self.stats.started_at = time.monotonic()
            capturer = self._start("capture", self._capture, downstream=self._frames)
            self._render()
        except QuitRequested:
            pass
        except Exception as error:
            self._errors.append(("output", error))
        finally:
            self._stop.set()
            # Sinks first: they belong to this thread, and a second Ctrl-C during the joins must not cost the video.
            self._close_sinks()
            worker.join(JOIN_TIMEOUT_S)
            if capturer is None:
                self.reader.close()
            else:
                capturer.join(JOIN_TIMEOUT_S)
            self._raise_first_error()
        return self.stats

    def _start(self, stage: str, body: Callable[[], None], *, downstream: queue.Queue) -> threading.Thread:
        thread = threading.Thread(
            target=self._guard, args=(stage, body, downstream), name=f"mnstream-{stage}", daemon=True
        )
        thread.start()
        return thread

    def _guard(self, stage: str, body: Callable[[], None], downstream: queue.Queue) -> None:
        try:
            body()
        except queues.Stopped:
            pass
        except BaseException as error:
            self._errors.append((stage, error))
            self._stop.set()
        finally:
            # Sent on the error path too, so the next stage never waits for a frame that will not come.
            try:
                queues.put(downstream, EndOfStream(self.reader.info.stream_id), self._stop)
            except queues.Stopped:
                pass

    def _capture(self) -> None:
        try:
            capture(
                self.reader,
                self._frames,
                self._stop,
                prepare=lambda image: model_input(image, self._input_size),
                stats=self.stats,
                reconnect=self._limits.reconnect,
            )
        finally:
            self.reader.close()

    def _infer(self) -> None:
        engine = self._engine_factory()
        try:
            width, height = self._input_size = engine.input_size
            engine.infer(np.zeros((1, height, width, 3), np.uint8))
            self._engine_ready.set()
            limits = self._limits
            postprocess_ms = self.stats.latency["postprocess"]
            # One live source delivers a frame per interval, slower than inference: waiting for a fuller batch
            # would only make the picture older. Whatever is queued still goes in together.
            max_wait_ms = 0.0 if self.reader.info.kind.is_live else limits.max_wait_ms
            while True:
                batch = collect_batch(self._frames, self._stop, max_size=limits.batch_size, max_wait_ms=max_wait_ms)
                if batch.frames:
                    started_at = time.monotonic()
                    scores = engine.infer(np.stack([frame.model_input for frame in batch.frames]))
                    inference_ms = (time.monotonic() - started_at) * 1000
                    for frame, frame_scores in zip(batch.frames, scores):
                        decided_at = time.monotonic()
                        labels = top_labels(
                            frame_scores, engine.classes, top_k=limits.top_k, threshold=limits.threshold
                        )
                        queued_ms = (started_at - frame.captured_at) * 1000
                        prediction = Prediction(
                            frame.stream_id, frame.index, labels, inference_ms, queued_ms, len(batch.frames)
                        )
                        postprocess_ms.add((time.monotonic() - decided_at) * 1000)
                        queues.put(self._results, (frame, prediction), self._stop)
                if batch.end is not None:
                    return
        finally:
            engine.close()

    def _render(self) -> None:
        stats = self.stats
        draws = any(sink.needs_overlay for sink in self._sinks)
        while True:
            try:
                item = queues.get(self._results, self._stop)
            except queues.Stopped:
                return
            if isinstance(item, EndOfStream):
                return
            frame, prediction = item
            stats.counters.inferred += 1
            drawn_at = time.monotonic()
            if draws:
                latency_ms = (drawn_at - frame.captured_at) * 1000
                draw_overlay(frame.image, prediction, fps=stats.fps.per_second, latency_ms=latency_ms)
            written_at = time.monotonic()
            for sink in self._sinks:
                sink.write(frame, prediction, stats)
            done_at = time.monotonic()
            stats.counters.written += 1
            stats.fps.tick(done_at)
            stats.latency["queued"].add(prediction.queued_ms)
            stats.latency["inference"].add(prediction.inference_ms)
            stats.latency["overlay"].add((written_at - drawn_at) * 1000)
            stats.latency["sinks"].add((done_at - written_at) * 1000)
            stats.latency["end to end"].add((done_at - frame.captured_at) * 1000)

    def _close_sinks(self) -> None:
        for sink in self._sinks:
            try:
                sink.close()
            except BaseException as error:
                self._errors.append((f"closing {type(sink).__name__}", error))

    def _raise_first_error(self) -> None:
        if not self._errors:
            return
        stage, error = self._errors[0]
        if isinstance(error, MnstreamError):
            raise error
        raise StageFailed(stage, error) from error


def _sinks_for(config: Config, reader: FrameReader, console: Console, stop: StopFlag) -> list[Sink]:
    info = reader.info
    output = config.output
    if info.kind is SourceKind.IMAGES:
        if output.path:
            raise UsageError("--output writes video; for still images the top-k is printed, drop --output")
        return [TopKPrinter(console)]
    sinks: list[Sink] = []
    try:
        if output.path:
            sinks.append(VideoFileSink(output.path, fps=info.fps))
        if not output.headless:
            sinks.append(WindowSink(f"mnstream: {info.name}", stop=stop))
        sinks.append(ConsoleSink(console, info, log_labels=output.headless, interval_s=output.log_interval_s))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
