"""Sinks on their own: what the video file sink writes when frames change size or come live, and output names."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from helpers import MjpegServer, index_frame, jpeg_frames, read_index, read_video, run_on_stream

from stream.cli import EXIT_OK
from stream.metrics import RunStats
from stream.sinks import VideoFileSink, output_paths
from stream.types import Frame, Prediction, UsageError


def write_frames(sink: VideoFileSink, sizes: list[tuple[int, int]], *, interval_s: float = 0.04) -> None:
    for index, (width, height) in enumerate(sizes):
        image = index_frame(index, width=width, height=height)
        frame = Frame(0, index, image, image, captured_at=100.0 + index * interval_s)
        sink.write(frame, Prediction(0, index, (), 1.0, 1.0, batch_size=1), RunStats())


def test_frames_of_a_new_size_are_scaled_not_lost(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # given a stream that comes back from an outage at twice its resolution
    path = tmp_path / "out.avi"
    sizes = [(320, 240)] * 5 + [(640, 480)] * 5

    # when
    with caplog.at_level(logging.WARNING, logger="stream"):
        sink = VideoFileSink(str(path), fps=25.0)
        write_frames(sink, sizes)
        sink.close()

    # then every frame is in the video, at the first size, and the change was told once
    frames, _ = read_video(path)
    assert [read_index(frame) for frame in frames] == list(range(10))
    assert {frame.shape[:2] for frame in frames} == {(240, 320)}
    assert caplog.text.count("frames now come at 640x480; they are scaled to the video's 320x240") == 1


def test_a_live_source_is_written_at_the_rate_its_frames_were_captured(tmp_path: Path) -> None:
    path = tmp_path / "live.avi"
    sink = VideoFileSink(str(path), fps=None)
    write_frames(sink, [(320, 240)] * 40, interval_s=1 / 15)
    sink.close()
    frames, fps = read_video(path)
    assert len(frames) == 40
    assert fps == pytest.approx(15, rel=0.01)


@pytest.mark.parametrize(
    ("pattern", "names", "paths"),
    [
        ("out.mp4", ["clip.mp4"], ["out.mp4"]),
        ("out/{name}.mp4", ["a.mp4", "a.mp4 (2)", "camera 0"], ["out/a.mp4", "out/a_2.mp4", "out/camera_0.mp4"]),
        ("out/", ["door.avi", "../../etc/x"], ["out/door.mp4", "out/etc_x.mp4"]),
    ],
    ids=["one stream", "pattern", "folder"],
)
def test_each_stream_gets_its_own_file_named_after_it(pattern: str, names: list[str], paths: list[str]) -> None:
    assert output_paths(pattern, names) == paths


@pytest.mark.parametrize(
    ("pattern", "names", "message"),
    [
        ("out.mp4", ["a.mp4", "b.mp4"], r"would be written by 2 streams; put \{name\} in it"),
        ("out/{name}.mp4", ["a.mp4", "a.avi"], r"gives two streams the same file"),
    ],
    ids=["no name", "same name"],
)
def test_streams_that_would_share_a_file_are_refused(pattern: str, names: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        output_paths(pattern, names)


def test_a_live_4k_source_is_measured_over_fewer_frames_than_30(tmp_path: Path) -> None:
    # given a live 4K source: 30 frames waiting for the rate to be measured would hold 750 MB
    path = tmp_path / "live4k.avi"
    sink = VideoFileSink(str(path), fps=None)

    # when
    write_frames(sink, [(3840, 2160)] * 10, interval_s=1 / 15)
    opened_early = path.exists()
    sink.close()

    # then the video was opened once 200 MB were waiting, at the rate measured so far
    assert opened_early
    frames, fps = read_video(path)
    assert len(frames) == 10 and fps == pytest.approx(15, rel=0.01)


def test_the_console_shows_the_rate_the_summary_reports(video_path: Path) -> None:
    # given a real MJPEG stream at 25 frames a second for 3 s
    with MjpegServer(jpeg_frames(video_path, count=10), parts=75, interval_s=0.04) as server:
        # when it runs with the labels logged every quarter of a second
        code, _, output = run_on_stream(server.url, "--log-interval", "0.25")

    # then the first lines show no rate, not a made-up one, and the rates shown agree with the summary's
    assert code == EXIT_OK, output
    shown = re.findall(r"  (\S+) fps  \d+ ms", output)
    summary = float(re.search(r"per second +│ +([\d.]+)", output).group(1))
    assert shown[0] == "-", output
    rates = [float(rate) for rate in shown if rate != "-"]
    assert len(rates) >= 5, output
    assert all(rate < 1.2 * summary for rate in rates), output
    assert rates[-1] == pytest.approx(summary, rel=0.15), output
