"""The pipeline's contracts: every frame once and in order for files, counted drops for live sources, errors
that stop everything and leave no thread behind.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    FakeEngine,
    RecordingSink,
    ScriptedReader,
    index_frame,
    read_index,
    read_video,
    recognizing,
    write_video,
)

from stream.metrics import RunStats
from stream.pipeline import JOIN_TIMEOUT_S, Pipeline, StageFailed
from stream.sources import Decoded, Probed, Reconnect, VideoCaptureReader
from stream.types import Frame, ModelError, Prediction, SourceKind
from stream.videofile import VideoFileSink


def mnstream_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("mnstream-")]


@pytest.mark.parametrize("reads_image", [True, False])
def test_the_overlay_goes_on_a_copy_only_while_a_sink_reads_the_captured_image(
    tmp_path: Path, reads_image: bool
) -> None:
    # given a video written with the overlay, and a sink beside it that takes the frames as captured
    source = write_video(tmp_path / "indexed.avi", (index_frame(i) for i in range(6)), fps=12.5)
    reader = Probed(VideoCaptureReader.open(str(source), SourceKind.VIDEO_FILE, stream_id=0))
    recorder = RecordingSink()
    recorder.reads_image = reads_image
    sinks = [VideoFileSink(str(tmp_path / "out.avi"), fps=12.5), recorder]

    # when
    Pipeline([reader], recognizing(FakeEngine()), sinks, batch_size=2).run()

    # then a sink that reads the image gets it as captured; otherwise the overlay was drawn on it, not on a copy
    captured, _ = read_video(source)
    as_captured = [np.array_equal(frame.image, image) for frame, image in zip(recorder.frames, captured, strict=True)]
    assert as_captured == [reads_image] * 6


@pytest.mark.parametrize("reads_image", [True, False])
def test_a_run_where_no_sink_reads_images_lets_them_go_after_the_model_copy(tmp_path: Path, reads_image: bool) -> None:
    # given a video and a single sink that reads images or not (a headless run with JSON lines reads none)
    source = write_video(tmp_path / "indexed.avi", (index_frame(i) for i in range(6)), fps=12.5)
    reader = Probed(VideoCaptureReader.open(str(source), SourceKind.VIDEO_FILE, stream_id=0))
    recorder = RecordingSink()
    recorder.reads_image = reads_image

    # when
    Pipeline([reader], recognizing(FakeEngine()), [recorder], batch_size=2).run()

    # then every frame arrives with its model input, and with its image only where the sink reads it
    captured, _ = read_video(source)
    assert [frame.index for frame in recorder.frames] == list(range(6))
    assert all(frame.model_input.shape == (32, 32, 3) for frame in recorder.frames)
    if reads_image:
        assert all(np.array_equal(frame.image, image) for frame, image in zip(recorder.frames, captured, strict=True))
    else:
        assert all(frame.image is None for frame in recorder.frames)


@pytest.mark.parametrize(
    ("frame_count", "batch_size", "max_wait_ms"),
    [(37, 1, 0.0), (37, 4, 0.0), (37, 8, 20.0), (37, 16, 50.0), (5, 32, 5.0)],
)
def test_video_file_comes_out_complete_and_in_order(
    tmp_path: Path, frame_count: int, batch_size: int, max_wait_ms: float
) -> None:
    # given a video whose frames encode their index, with a partial last batch in every case
    source = write_video(tmp_path / "indexed.avi", (index_frame(i) for i in range(frame_count)), fps=12.5)
    reader = Probed(VideoCaptureReader.open(str(source), SourceKind.VIDEO_FILE, stream_id=0))
    output = tmp_path / "out.avi"
    recorder = RecordingSink()
    engine = FakeEngine()
    stats = RunStats()
    pipeline = Pipeline(
        [reader],
        recognizing(engine),
        [VideoFileSink(str(output), fps=reader.info.fps), recorder],
        batch_size=batch_size,
        max_wait_ms=max_wait_ms,
        observer=stats,
    )

    # when
    pipeline.run()

    # then every index comes out once, in order, in the predictions and in the written video
    assert [frame.index for frame in recorder.frames] == list(range(frame_count))
    assert [prediction.frame_index for prediction in recorder.predictions] == list(range(frame_count))
    frames, fps = read_video(output)
    assert [read_index(image) for image in frames] == list(range(frame_count))
    assert fps == pytest.approx(12.5)
    warm_up, *batches = engine.batch_sizes
    assert warm_up == 1 and max(batches) <= batch_size
    assert sum(batches) == frame_count
    assert stats.counters.read == stats.counters.inferred == stats.counters.written == frame_count
    assert stats.counters.dropped == 0
    assert engine.closed and recorder.closed
    assert not mnstream_threads()


def test_batches_fill_up_when_frames_are_waiting() -> None:
    # given a fast file source and a slow engine, so frames queue up behind each model call
    engine = FakeEngine(delay_s=0.02)
    pipeline = Pipeline(
        [ScriptedReader(64)],
        recognizing(engine),
        [RecordingSink()],
        batch_size=8,
        max_wait_ms=50,
        queue_size=16,
    )

    # when
    pipeline.run()

    # then most model calls carry a full batch
    assert engine.batch_sizes.count(8) >= len(engine.batch_sizes) // 2


def test_file_source_never_drops_under_a_slow_engine() -> None:
    # given
    engine = FakeEngine(delay_s=0.01)
    recorder = RecordingSink()
    stats = RunStats()
    pipeline = Pipeline(
        [ScriptedReader(60)], recognizing(engine), [recorder], batch_size=2, queue_size=2, observer=stats
    )

    # when
    pipeline.run()

    # then
    assert [frame.index for frame in recorder.frames] == list(range(60))
    assert stats.counters.dropped == 0


def test_live_source_drops_oldest_and_counts_it() -> None:
    # given a camera-like source far faster than the engine
    engine = FakeEngine(delay_s=0.03)
    recorder = RecordingSink()
    reader = ScriptedReader(200, kind=SourceKind.CAMERA, delay_s=0.001)
    no_reconnect = Reconnect(attempts=0)
    stats = RunStats()
    pipeline = Pipeline(
        [reader],
        recognizing(engine),
        [recorder],
        batch_size=2,
        max_wait_ms=0,
        queue_size=2,
        reconnect=no_reconnect,
        observer=stats,
    )

    # when
    pipeline.run()

    # then frames were dropped, every frame is accounted for, and what was shown is still in order
    counters = stats.counters
    assert counters.dropped > 0
    assert counters.read == 200
    assert counters.inferred + counters.dropped == counters.read
    shown = [frame.index for frame in recorder.frames]
    assert shown == sorted(shown) and len(set(shown)) == len(shown)
    assert shown[-1] == 199, "the freshest frame must survive a drop"


def test_reader_failure_stops_the_run_with_one_error() -> None:
    # given
    reader = ScriptedReader(100, fail_at=10)
    engine = FakeEngine()
    recorder = RecordingSink()
    pipeline = Pipeline([reader], recognizing(engine), [recorder], batch_size=4)

    # when
    with pytest.raises(StageFailed, match=r"capture of scripted 0 failed: RuntimeError: scripted failure at frame 10"):
        pipeline.run()

    # then what was read before the failure went through, and everything was released
    assert [frame.index for frame in recorder.frames] == list(range(10))
    assert reader.closed and engine.closed and recorder.closed
    assert not mnstream_threads()


class EngineFailingAt(FakeEngine):
    """Fails on a given call, noting how many frames the source had delivered by then."""

    def __init__(self, call: int, reader: ScriptedReader) -> None:
        super().__init__(fail_on_call=call)
        self._reader = reader
        self.delivered_at_failure: int | None = None

    def infer(self, images: np.ndarray) -> np.ndarray:
        try:
            return super().infer(images)
        except RuntimeError:
            self.delivered_at_failure = self._reader.delivered
            raise


def test_engine_failure_stops_capture_at_once() -> None:
    # given an endless live source and an engine that fails on its third call (the warm-up is the first)
    reader = ScriptedReader(10**9, kind=SourceKind.CAMERA, delay_s=0.005)
    engine = EngineFailingAt(3, reader)
    pipeline = Pipeline([reader], recognizing(engine), [RecordingSink()], batch_size=2)

    # when
    with pytest.raises(StageFailed, match="inference failed: RuntimeError: scripted engine failure"):
        pipeline.run()

    # then the capture thread stopped reading with the frame it was reading, and everything was released
    assert engine.delivered_at_failure is not None
    assert reader.delivered - engine.delivered_at_failure <= 2
    assert reader.closed and engine.closed
    assert not mnstream_threads()


def test_engine_that_cannot_load_fails_before_capture_starts() -> None:
    # given
    reader = ScriptedReader(10)

    def broken_engine() -> FakeEngine:
        raise ModelError("model broken.keras cannot be loaded")

    recorder = RecordingSink()

    # when
    with pytest.raises(ModelError, match="broken.keras"):
        Pipeline([reader], recognizing(broken_engine), [recorder]).run()

    # then
    assert recorder.frames == [] and recorder.closed and reader.closed
    assert not mnstream_threads()


class FailingSink(RecordingSink):
    def write(self, frame: Frame, prediction: Prediction) -> None:
        if frame.index == 5:
            raise OSError("disk full")
        super().write(frame, prediction)


def test_sink_failure_stops_the_run_and_closes_everything() -> None:
    # given
    reader = ScriptedReader(100)
    sink = FailingSink()

    # when
    with pytest.raises(StageFailed, match="output failed: OSError: disk full"):
        Pipeline([reader], recognizing(FakeEngine), [sink]).run()

    # then
    assert len(sink.frames) == 5 and sink.closed and reader.closed
    assert not mnstream_threads()


def test_predictions_carry_batch_and_timing() -> None:
    # given
    recorder = RecordingSink()
    pipeline = Pipeline([ScriptedReader(12)], recognizing(FakeEngine, top_k=1), [recorder], batch_size=4)

    # when
    pipeline.run()

    # then every frame has its prediction, with the batch it went in and the time it waited and took
    assert [prediction.frame_index for prediction in recorder.predictions] == list(range(12))
    for prediction in recorder.predictions:
        assert 1 <= prediction.batch_size <= 4
        assert prediction.inference_ms > 0 and prediction.queued_ms > 0
        assert len(prediction.labels) == 1


def test_stop_ends_an_endless_live_run_cleanly() -> None:
    # given an endless camera-like source
    reader = ScriptedReader(10**9, kind=SourceKind.CAMERA, delay_s=0.002)
    recorder = RecordingSink()
    stats = RunStats()
    pipeline = Pipeline([reader], recognizing(FakeEngine), [recorder], observer=stats)

    # when something (a signal handler, in the CLI) asks it to stop
    threading.Timer(0.3, pipeline.stop).start()
    pipeline.run()

    # then it returns normally, with what it wrote counted and everything released
    assert stats.counters.written == len(recorder.frames) > 0
    assert reader.closed and recorder.closed
    assert not mnstream_threads()


class BlockingReader(ScriptedReader):
    """A driver stuck inside read() after a few frames, until the test lets it go."""

    def __init__(self) -> None:
        super().__init__(10**9, kind=SourceKind.CAMERA)
        self.release = threading.Event()

    def read(self) -> Decoded | None:
        if self._next >= 3:
            self.release.wait()
            return None
        return super().read()


def test_reader_blocked_in_read_does_not_hang_shutdown() -> None:
    # given a reader that hangs inside read() after three frames, and an engine that fails on the second frame
    reader = BlockingReader()
    pipeline = Pipeline([reader], recognizing(lambda: FakeEngine(fail_on_call=2)), [RecordingSink()], batch_size=1)

    # when
    started = time.monotonic()
    with pytest.raises(StageFailed, match="scripted engine failure"):
        pipeline.run()
    returned_after_s = time.monotonic() - started

    # then the run returned without the stuck thread, which ends and closes the reader once the driver lets go
    assert returned_after_s < JOIN_TIMEOUT_S + 2
    reader.release.set()
    for thread in mnstream_threads():
        thread.join(5)
    assert not mnstream_threads() and reader.closed


def current_rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemorySampler(RecordingSink):
    """Samples the process's resident memory every 1,000 frames instead of keeping frames."""

    def __init__(self) -> None:
        super().__init__()
        self.rss_mb: list[float] = []
        self.count = 0

    def write(self, frame: Frame, prediction: Prediction) -> None:
        self.count += 1
        if self.count % 1000 == 0:
            self.rss_mb.append(current_rss_mb())


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_memory_stays_flat_over_20000_frames() -> None:
    # given a long generated file source
    sampler = MemorySampler()
    stats = RunStats()
    pipeline = Pipeline(
        [ScriptedReader(20_000, size=(160, 120))], recognizing(FakeEngine), [sampler], batch_size=8, observer=stats
    )

    # when
    pipeline.run()

    # then after warming up, resident memory does not grow with the number of frames
    assert stats.counters.written == sampler.count == 20_000
    warmed_up, final = sampler.rss_mb[1], sampler.rss_mb[-1]
    assert final - warmed_up < 16, f"RSS grew from {warmed_up:.1f} MB to {final:.1f} MB: {sampler.rss_mb}"


class SlowSink(RecordingSink):
    def write(self, frame: Frame, prediction: Prediction) -> None:
        time.sleep(0.0002)
        self.frames.append(frame)


@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_10000_frame_file_loses_nothing_under_slow_stages(
    tmp_path_factory: pytest.TempPathFactory, batch_size: int
) -> None:
    # given a 10,000-frame index-encoded video, a slow engine and a slow sink
    source = long_indexed_video(tmp_path_factory)
    reader = Probed(VideoCaptureReader.open(str(source), SourceKind.VIDEO_FILE, stream_id=0))
    sink = SlowSink()
    engine = FakeEngine(delay_s=0.001)

    # when
    Pipeline([reader], recognizing(engine), [sink], batch_size=batch_size, queue_size=4).run()

    # then every index arrived once, in order
    assert [read_index(frame.image) for frame in sink.frames] == list(range(10_000))


def long_indexed_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "indexed_10000.avi"
    if not path.exists():
        write_video(path, (index_frame(i, width=160, height=120) for i in range(10_000)))
    return path
