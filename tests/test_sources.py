"""Readers and the capture loop: frame formats, live sources that stop delivering and come back, damaged frames."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import (
    FakeEngine,
    MjpegServer,
    RecordingSink,
    ScriptedReader,
    index_frame,
    jpeg_frames,
    read_index,
    recognizing,
    run_on_stream,
    write_video,
)

from stream.commands import EXIT_OK
from stream.config import StreamConfig
from stream.metrics import RunStats
from stream.pipeline import Pipeline
from stream.queues import POLL_S, StopFlag, Stopped
from stream.sources import (
    ImageReader,
    Probed,
    Reconnect,
    Source,
    VideoCaptureReader,
    as_bgr8,
    open_reader,
    opened_interruptibly,
)
from stream.types import SourceError, SourceKind


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((4, 6), np.uint8),
        np.zeros((4, 6, 1), np.uint8),
        np.zeros((4, 6, 4), np.uint8),
        np.zeros((4, 6, 3), np.uint16),
        np.zeros((1, 1, 3), np.uint8),
    ],
    ids=["gray", "gray-1-channel", "bgra", "16-bit", "1x1"],
)
def test_any_decoded_frame_becomes_bgr8(image: np.ndarray) -> None:
    converted = as_bgr8(image)
    assert converted.dtype == np.uint8 and converted.shape == (*image.shape[:2], 3)


def test_16_bit_keeps_the_high_byte() -> None:
    assert as_bgr8(np.full((2, 2, 3), 0xAB12, np.uint16))[0, 0, 0] == 0xAB


def test_reconnect_delays_double_up_to_the_cap() -> None:
    assert list(Reconnect(attempts=6, delay_s=1.0, max_delay_s=10.0).delays()) == [1, 2, 4, 8, 10, 10]


def run_live(
    reader: Source,
    reconnect: Reconnect,
    engine: Callable[[], FakeEngine] = FakeEngine,
    *,
    model_ready: threading.Event | None = None,
) -> tuple[RunStats, RecordingSink]:
    recorder = RecordingSink()
    stats = RunStats()
    pipeline = Pipeline(
        [reader],
        recognizing(engine),
        [recorder],
        reconnect=reconnect,
        queue_size=64,
        observer=stats,
        model_ready=model_ready,
    )
    pipeline.run()
    return stats, recorder


def test_live_source_that_comes_back_is_reconnected(caplog: pytest.LogCaptureFixture) -> None:
    # given a camera that goes dark at frame 10 and needs three tries to come back
    ready = threading.Event()  # frames come once the model is ready, so none is dropped while it loads
    reader = ScriptedReader(30, kind=SourceKind.CAMERA, outages={10: 2}, starts=ready)

    # when
    with caplog.at_level(logging.WARNING, logger="stream"):
        stats, recorder = run_live(reader, Reconnect(attempts=5, delay_s=0.01), model_ready=ready)

    # then every frame came through, the gap is counted, and the console was told
    assert [frame.index for frame in recorder.frames] == list(range(30))
    counters = stats.counters
    assert counters.reconnects == 1 and counters.lost_s > 0
    messages = [record.getMessage() for record in caplog.records]
    assert any("stopped delivering; reconnecting in 0.0 s (1 of 5)" in message for message in messages)
    assert any("is back after" in message for message in messages)
    # at its real end it was tried five more times, then the run finished cleanly
    assert reader.reopens == 3 + 5
    assert "did not come back after 5 attempts" in messages[-1]
    assert recorder.closed and reader.closed


def test_live_source_that_stays_dark_ends_the_run_cleanly() -> None:
    ready = threading.Event()  # frames come once the model is ready, so none is dropped while it loads
    reader = ScriptedReader(30, kind=SourceKind.CAMERA, outages={10: 100}, starts=ready)
    stats, recorder = run_live(reader, Reconnect(attempts=3, delay_s=0.01), model_ready=ready)
    assert [frame.index for frame in recorder.frames] == list(range(10))
    assert reader.reopens == 3 and stats.counters.reconnects == 0
    assert recorder.closed and reader.closed


class OpensButSendsNothing(ScriptedReader):
    """A stream URL whose server accepts every connection and then sends no frame."""

    def reopen(self, stop: StopFlag) -> bool:
        self.reopens += 1
        return True


def test_a_source_that_reopens_but_sends_nothing_has_not_come_back() -> None:
    ready = threading.Event()  # frames come once the model is ready, so none is dropped while it loads
    reader = OpensButSendsNothing(10, kind=SourceKind.URL, starts=ready)
    stats, recorder = run_live(reader, Reconnect(attempts=3, delay_s=0.01), model_ready=ready)
    assert len(recorder.frames) == 10
    assert reader.reopens == 3 and stats.counters.reconnects == 0
    assert recorder.closed and reader.closed


def slow_to_load() -> FakeEngine:
    time.sleep(0.3)
    return FakeEngine()


def test_a_live_source_skips_what_it_sends_while_the_model_loads() -> None:
    # given a camera sending every 10 ms and a model that takes 0.3 s to load
    reader = ScriptedReader(60, kind=SourceKind.CAMERA, delay_s=0.01)

    # when
    stats, recorder = run_live(reader, Reconnect(attempts=0), engine=slow_to_load)

    # then the frames sent during the load were dropped and counted, and every later one came through
    first = recorder.frames[0].index
    assert 10 <= first < 60
    assert [frame.index for frame in recorder.frames] == list(range(first, 60))
    assert stats.counters.dropped == first


def test_a_file_waits_for_the_model() -> None:
    stats, recorder = run_live(ScriptedReader(30), Reconnect(attempts=0), engine=slow_to_load)
    assert [frame.index for frame in recorder.frames] == list(range(30))
    assert stats.counters.dropped == 0


def test_a_file_that_ends_is_not_reopened() -> None:
    reader = ScriptedReader(10)
    run_live(reader, Reconnect(attempts=5, delay_s=0.01))
    assert reader.reopens == 0


def test_stop_interrupts_the_backoff() -> None:
    # given a camera that goes dark with a long delay before the first retry
    reader = ScriptedReader(30, kind=SourceKind.CAMERA, outages={5: 0})
    pipeline = Pipeline([reader], recognizing(FakeEngine), [RecordingSink()], reconnect=Reconnect(3, delay_s=30.0))

    # when
    threading.Timer(0.3, pipeline.stop).start()
    started = time.monotonic()
    pipeline.run()

    # then
    assert time.monotonic() - started < 5
    assert reader.reopens == 0 and reader.closed


def test_a_folder_skips_an_image_it_cannot_decode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # given a folder with a broken image between two good ones
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(tmp_path / name), index_frame(1))
    (tmp_path / "b.png").write_text("not an image")
    reader = ImageReader.open(str(tmp_path), stream_id=0)

    # when
    with caplog.at_level(logging.WARNING, logger="stream"):
        origins = [item.origin for item in iter(reader.read, None)]

    # then
    assert [Path(origin).name for origin in origins] == ["a.png", "c.png"]
    assert "skipping " in caplog.text and "b.png: it is not an image OpenCV can decode" in caplog.text


def test_an_image_named_on_its_own_that_cannot_be_decoded_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "b.png").write_text("not an image")
    reader = ImageReader.open(str(tmp_path / "b.png"), stream_id=0)
    with pytest.raises(SourceError, match="b.png is not an image OpenCV can decode"):
        reader.read()


def test_a_file_whose_name_has_brackets_is_that_file_not_a_glob(tmp_path: Path) -> None:
    # given a video and an image whose names glob would read as character classes
    video = write_video(tmp_path / "cam[2].avi", [index_frame(index) for index in range(3)])
    image = tmp_path / "shot[1].png"
    cv2.imwrite(str(image), index_frame(7))

    # when
    readers = [open_reader(StreamConfig(source=str(path))) for path in (video, image)]

    # then
    assert [reader.info.kind for reader in readers] == [SourceKind.VIDEO_FILE, SourceKind.IMAGES]
    assert [read_index(decoded.image) for decoded in iter(readers[0].read, None)] == [0, 1, 2]
    assert [decoded.origin for decoded in iter(readers[1].read, None)] == [str(image)]
    for reader in readers:
        reader.close()


def test_corrupt_parts_of_an_mjpeg_stream_are_skipped_and_counted_not_taken_for_a_lost_stream(
    video_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given an MJPEG stream whose every 5th part is random bytes, ending on good parts
    with MjpegServer(jpeg_frames(video_path, count=10), parts=152, interval_s=0.01, corrupt_every=5) as server:
        # when
        code, counts, output = run_on_stream(server.url)

    # then every part was either read or counted as undecodable, over the one connection, and said once
    assert code == EXIT_OK, output
    assert (server.sent, server.corrupted, server.connections) == (152, 30, 1)
    assert counts["read"] == 122 and counts["undecodable"] == 30 and counts["reconnects"] == 0, output
    assert capsys.readouterr().err.count("cannot be decoded") == 1


def test_an_mjpeg_stream_that_stops_delivering_is_reconnected(video_path: Path) -> None:
    # given an MJPEG stream whose server closes the connection after part 40, then serves the rest to a new one
    with MjpegServer(jpeg_frames(video_path, count=10), parts=80, interval_s=0.01, cut_after=[40]) as server:
        # when
        code, counts, output = run_on_stream(server.url)

    # then
    assert code == EXIT_OK, output
    assert (server.sent, server.connections) == (80, 2)
    assert counts["read"] == 80 and counts["undecodable"] == 0 and counts["reconnects"] == 1, output


def test_a_damaged_frame_in_a_file_is_skipped_and_the_rest_keep_their_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given an MJPEG video whose 10th of 20 frames has random bytes in place of half its JPEG data
    video = write_video(tmp_path / "clip.avi", (index_frame(index) for index in range(20)))
    data = bytearray(video.read_bytes())
    jpeg_starts = [match.start() for match in re.finditer(b"\xff\xd8\xff", data)]
    damaged = slice(jpeg_starts[9] + 100, (jpeg_starts[9] + jpeg_starts[10]) // 2)
    data[damaged] = np.random.default_rng(0).bytes(damaged.stop - damaged.start)
    video.write_bytes(data)
    reader = Probed(VideoCaptureReader.open(str(video), SourceKind.VIDEO_FILE, stream_id=0))

    # when
    with caplog.at_level(logging.WARNING, logger="stream"):
        stats, recorder = run_live(reader, Reconnect(attempts=0))

    # then every other frame came through, with its index in the file, and the damage was reported, not an end
    expected = [index for index in range(20) if index != 9]
    assert [frame.index for frame in recorder.frames] == expected
    assert [read_index(frame.image) for frame in recorder.frames] == expected
    assert stats.counters.undecodable == 1
    assert "cannot be decoded" in caplog.text and "ended after" not in caplog.text


class SlowCapture:
    """Stands in for a network stream's `cv2.VideoCapture` whose open blocks until the test lets it go."""

    def __init__(self, release: threading.Event) -> None:
        release.wait(10)
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()


def test_a_stop_ends_a_blocked_open_and_the_late_capture_is_released() -> None:
    # given an open blocked in the driver, as a reconnecting stream's is for up to its network timeout
    stop, let_go = StopFlag(), threading.Event()
    opened: list[SlowCapture] = []

    def open_capture() -> SlowCapture:
        opened.append(SlowCapture(let_go))
        return opened[-1]

    # when the run stops while it waits
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        opened_interruptibly(open_capture, stop)  # type: ignore[arg-type]

    # then the wait ended within a poll of the stop, and the capture that opened later is released, not leaked
    assert time.monotonic() - started < 0.2 + 2 * POLL_S
    let_go.set()
    for thread in [t for t in threading.enumerate() if t.name == "mnstream-open"]:
        thread.join(5)
    assert opened and opened[0].released.is_set()
