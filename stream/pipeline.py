"""Owns the threads, the queues, the stop event and the errors: capture -> batched inference -> overlay -> sinks."""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from stream import queues
from stream.batching import Muxer
from stream.events import (
    NULL_OBSERVER,
    FrameInferred,
    FrameWritten,
    ModelReady,
    Observer,
    RunEnded,
    StageError,
    StreamEnded,
)
from stream.overlay import Annotator
from stream.queues import EndOfStream, StopFlag
from stream.recognizer import Recognizer
from stream.sinks import Sink
from stream.sources import NO_RECONNECT, Reconnect, Source, capture
from stream.types import Frame, MnstreamError, Prediction

log = logging.getLogger(__name__)

BATCHES_IN_FLIGHT = 2
"""Inference workers, each with a batch in the model: while one hands out its predictions, or waits for a remote
replica's answer, the model already runs the next batch."""
JOIN_TIMEOUT_S = 2.0
"""How long shutdown waits for a thread; a reader stuck inside a driver call is abandoned (threads are daemons)."""


class StageFailed(MnstreamError):
    """An unexpected exception in a pipeline thread; its cause carries the traceback for --debug."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage} failed: {type(error).__name__}: {error}")


class Pipeline:
    """Sources through one engine into sinks.

    Threads: each capture thread owns its reader; the inference thread owns the engine (it creates, warms up and
    closes it) and, with the workers it starts, batches across streams, each worker's batch in the model while
    the others' are, their predictions handed on in the order the batches were taken; the thread that calls `run`
    draws and writes to the sinks, as OpenCV windows need.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        recognizer_factory: Callable[[], Recognizer],
        sinks: Sequence[Sink],
        *,
        batch_size: int = 8,
        max_wait_ms: float = 20.0,
        queue_size: int = 8,
        reconnect: Reconnect = NO_RECONNECT,
        observer: Observer = NULL_OBSERVER,
        stop: StopFlag | None = None,
        model_ready: threading.Event | None = None,
    ) -> None:
        """Takes ready collaborators; `from_config` builds them from a config.

        Args:
            sources: One per stream, in stream order; each is opened, read and closed on its capture thread.
            recognizer_factory: Called on the inference thread, which owns the recognizer (and its engine) it
                returns.
            sinks: Where each annotated frame and its prediction go, in order.
            batch_size: Frames per model call at most.
            max_wait_ms: How long a batch of file frames waits to fill after its first frame.
            queue_size: Frames queued per stream before inference, and results after it.
            reconnect: How a live source that stops delivering is reopened.
            observer: Told what happens, from the thread it happens on (see `stream.events`).
            stop: The run's stop flag, for a caller that stops other things with it too.
            model_ready: Set once the model has loaded and warmed up, for a caller that waits for it.
        """
        self._sources = list(sources)
        self.infos = [source.info for source in self._sources]
        """What each stream's source is, in stream order."""
        stream_ids = [info.stream_id for info in self.infos]
        self._observer = observer
        self._recognizer_factory = recognizer_factory
        self._recognizer: Recognizer | None = None
        self._sinks = list(sinks)
        self.keeps_images = any(sink.reads_image for sink in self._sinks)
        """Whether frames keep their captured image past the model's copy: only where a sink reads it."""
        self._batch_size = batch_size
        self._max_wait_ms = max_wait_ms
        self._reconnect = reconnect
        self._stop = stop or StopFlag()
        self._model_ready = model_ready or threading.Event()
        self._errors: list[tuple[str, BaseException]] = []
        self._muxer = Muxer(stream_ids, capacity=queue_size)
        self._collecting = threading.Lock()
        """Held by the inference worker taking a batch from the muxer, which has one consumer at a time."""
        self._results: queue.Queue[tuple[Frame, Prediction] | EndOfStream] = queue.Queue(maxsize=queue_size)

    def stop(self) -> None:
        """Asks every stage to finish; `run` then closes the sinks and returns. Safe to call from a signal handler."""
        self._stop.set()

    def run(self) -> None:
        """Runs to the end of every source, a quit from the window, or an error; always closes the sinks.

        Raises:
            MnstreamError: A stage failed (the first error, once), sinks included.
            KeyboardInterrupt: Interrupted; the sinks are closed (the video is playable) before it propagates.
        """
        worker = self._start("inference", self._infer, finish=self._end_results)
        capturers = [
            self._start(
                f"capture of {source.info.name}",
                functools.partial(self._capture, source),
                finish=functools.partial(self._end_stream, source.info.stream_id),
            )
            for source in self._sources
        ]
        try:
            while not self._model_ready.wait(queues.POLL_S):
                if self._stop.is_set():
                    return
            self._observer.notify(ModelReady(time.monotonic()))
            self._render()
        except Exception as error:
            self._fail("output", error)
        finally:
            ended_at = time.monotonic()
            self._stop.set()
            # Sinks first: they belong to this thread, and a second Ctrl-C during the joins must not cost the video.
            self._close_sinks()
            for thread in [worker, *capturers]:
                thread.join(JOIN_TIMEOUT_S)
                if thread.is_alive():
                    # A model still loading, or a driver call that does not return: neither can be interrupted.
                    log.info(f"{thread.name} is still busy {JOIN_TIMEOUT_S:.0f} s after the stop; not waiting for it")
            # Told after the joins, so that it is the last event, after each capture thread's StreamEnded.
            self._observer.notify(RunEnded(ended_at))
            self._raise_first_error()

    def _start(self, stage: str, body: Callable[[], None], *, finish: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=self._guard, args=(stage, body, finish), name=f"mnstream-{stage}", daemon=True)
        thread.start()
        return thread

    def _guard(self, stage: str, body: Callable[[], None], finish: Callable[[], None]) -> None:
        try:
            body()
        except queues.Stopped:
            pass
        except BaseException as error:
            self._fail(stage, error)
            self._stop.set()
        finally:
            # The end-of-stream marker goes out on the error path too, so the next stage never waits for a frame
            # that will not come.
            try:
                finish()
            except queues.Stopped:
                pass

    def _fail(self, stage: str, error: BaseException) -> None:
        self._errors.append((stage, error))
        self._observer.notify(StageError(stage, f"{type(error).__name__}: {error}"))

    def _end_stream(self, stream_id: int) -> None:
        self._observer.notify(StreamEnded(stream_id, time.monotonic()))
        self._muxer.end(stream_id, self._stop)

    def _end_results(self) -> None:
        queues.put(self._results, EndOfStream(None), self._stop)

    def _capture(self, source: Source) -> None:
        reader = source.open()
        try:
            capture(
                reader,
                self._muxer,
                self._stop,
                # Called once the model is ready, which is when the recognizer exists.
                prepare=lambda image: self._recognizer.prepare(image),
                keeps_images=self.keeps_images,
                observer=self._observer,
                reconnect=self._reconnect,
                model_ready=self._model_ready,
            )
        finally:
            reader.close()

    def _infer(self) -> None:
        recognizer = self._recognizer = self._recognizer_factory()
        try:
            recognizer.warm_up()
            self._model_ready.set()
            work = functools.partial(self._infer_batches, recognizer, itertools.count(), queues.Turns())
            others = [self._start("inference", work, finish=_nothing) for _ in range(BATCHES_IN_FLIGHT - 1)]
            try:
                work()
            except BaseException:
                # The others may be waiting for the turn of this thread's batch.
                self._stop.set()
                raise
            finally:
                for other in others:
                    other.join()
        finally:
            recognizer.close()

    def _infer_batches(self, recognizer: Recognizer, tickets: itertools.count[int], turns: queues.Turns) -> None:
        """One inference worker: takes the next batch, runs the model on it, and hands its predictions on in turn."""
        # A live source delivers a frame per interval, slower than inference: waiting for a fuller batch would only
        # make the picture older. Whatever is queued, from every stream, still goes in together.
        live = all(info.kind.is_live for info in self.infos)
        max_wait_ms = 0.0 if live else self._max_wait_ms
        while True:
            with self._collecting:
                if not self._muxer.is_open:
                    return
                batch = self._muxer.collect(self._stop, max_size=self._batch_size, max_wait_ms=max_wait_ms)
                if not batch.frames:
                    continue
                ticket = next(tickets)
            scored = recognizer.score(batch.frames)
            with turns.turn(ticket, self._stop):
                started_at = time.monotonic()
                predictions = recognizer.predict(batch.frames, scored)
                done_at = time.monotonic()
                postprocess_ms = (done_at - started_at) * 1000 / len(predictions)
                for frame, prediction in zip(batch.frames, predictions, strict=True):
                    self._observer.notify(
                        FrameInferred(
                            frame.stream_id,
                            frame.index,
                            done_at,
                            prediction.queued_ms,
                            prediction.inference_ms,
                            postprocess_ms,
                            prediction.batch_size,
                        )
                    )
                    queues.put(self._results, (frame, prediction), self._stop)

    def _render(self) -> None:
        draws = any(sink.needs_overlay for sink in self._sinks)
        titles = {info.stream_id: info.name for info in self.infos} if len(self.infos) > 1 else {}
        annotator = Annotator(titles, copy=any(sink.reads_image and not sink.needs_overlay for sink in self._sinks))
        while True:
            try:
                item = queues.get(self._results, self._stop)
            except queues.Stopped:
                return
            if isinstance(item, EndOfStream):
                return
            frame, prediction = item
            drawn_at = time.monotonic()
            shown = annotator.annotate(frame, prediction, now=drawn_at) if draws else frame
            written_at = time.monotonic()
            for sink in self._sinks:
                # A sink that draws nothing gets the frame as captured: the caller's own may keep its image.
                sink.write(shown if sink.needs_overlay else frame, prediction)
            done_at = time.monotonic()
            self._observer.notify(
                FrameWritten(
                    frame.stream_id,
                    frame.index,
                    done_at,
                    overlay_ms=(written_at - drawn_at) * 1000,
                    sinks_ms=(done_at - written_at) * 1000,
                    end_to_end_ms=(done_at - frame.captured_at) * 1000,
                )
            )

    def _close_sinks(self) -> None:
        """Closes every sink, even after one fails or a second Ctrl-C lands: the others' files must be playable."""
        interrupt: BaseException | None = None
        for sink in self._sinks:
            try:
                sink.close()
            except Exception as error:
                self._fail(f"closing {type(sink).__name__}", error)
            except BaseException as forced:
                interrupt = forced
        if interrupt is not None:
            raise interrupt

    def _raise_first_error(self) -> None:
        if not self._errors:
            return
        stage, error = self._errors[0]
        for later_stage, later in self._errors[1:]:
            # A file that failed to take a frame fails again as it is closed: one cause, said once.
            if str(later) != str(error):
                log.error(f"{later_stage} also failed: {type(later).__name__}: {later}")
        if isinstance(error, MnstreamError):
            raise error
        raise StageFailed(stage, error) from error


def _nothing() -> None:
    """The finish of an inference worker other than the first: the first sends the end of the results."""
