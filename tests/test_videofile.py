"""The video file sink on its own: codecs and their quality, frames of a new size, live sources at their capture
times.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import pytest
from helpers import index_frame, read_index, read_video

from stream.types import Frame, Prediction, UsageError
from stream.videofile import VideoFileSink
from stream.videoformats import CONTAINERS, choose_format


def write_frames(sink: VideoFileSink, sizes: list[tuple[int, int]], times_s: list[float], *, live: bool) -> None:
    """Index-encoded frames at the given times: their capture times for a live source, else their timestamps."""
    for index, ((width, height), at_s) in enumerate(zip(sizes, times_s, strict=True)):
        image = index_frame(index, width=width, height=height)
        frame = Frame(0, index, image, image, captured_at=100.0 + at_s, position_s=None if live else at_s)
        sink.write(frame, Prediction(0, index, (), 1.0, 1.0, batch_size=1))


def decoded(path: Path) -> tuple[str, list[float], list[int]]:
    """The codec, each frame's time and each frame's index, as PyAV decodes them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return (
            stream.codec_context.codec.canonical_name,
            [float(f.time) for f in frames],
            [read_index(f.to_ndarray(format="bgr24")) for f in frames],
        )


@pytest.mark.parametrize(
    ("suffix", "codec"), [(".mp4", "h264"), (".mov", "h264"), (".mkv", "h264"), (".webm", "vp9"), (".avi", "mjpeg")]
)
def test_frames_of_a_new_size_are_scaled_not_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, suffix: str, codec: str
) -> None:
    # given a stream that comes back from an outage at twice its resolution
    path = tmp_path / f"out{suffix}"
    sizes = [(320, 240)] * 5 + [(640, 480)] * 5

    # when
    with caplog.at_level(logging.WARNING, logger="stream"):
        sink = VideoFileSink(str(path), fps=25.0)
        write_frames(sink, sizes, [index / 25 for index in range(10)], live=False)
        sink.close()

    # then every frame is in the video, in the extension's codec, at the first size, and the change was told once
    frames, fps = read_video(path)
    assert [read_index(frame) for frame in frames] == list(range(10))
    assert {frame.shape[:2] for frame in frames} == {(240, 320)}
    assert fps == pytest.approx(25)
    assert decoded(path)[0] == codec
    assert caplog.text.count("frames now come at 640x480; they are scaled to the video's 320x240") == 1


def test_a_live_source_is_written_at_the_times_its_frames_were_captured(tmp_path: Path) -> None:
    # given a camera at 15 fps that stalls for half a second after its 20th frame
    path = tmp_path / "live.mp4"
    times_s = [index / 15 for index in range(20)] + [0.5 + index / 15 for index in range(20, 40)]

    # when
    sink = VideoFileSink(str(path), fps=None)
    write_frames(sink, [(320, 240)] * 40, times_s, live=True)
    sink.close()

    # then each frame plays when it was captured, the stall included
    _, frame_times_s, indices = decoded(path)
    assert indices == list(range(40))
    assert frame_times_s == pytest.approx(times_s, abs=1e-4)


def test_a_live_source_reaches_the_file_as_it_comes(tmp_path: Path) -> None:
    # given a camera whose first frames span more than a fragment (1 s)
    path = tmp_path / "live.mp4"
    sink = VideoFileSink(str(path), fps=None)

    # when
    write_frames(sink, [(320, 240)] * 4, [0.0, 0.6, 1.2, 1.8], live=True)

    # then the first fragment is playable before the run ends: nothing was held back to measure a rate
    try:
        assert decoded(path)[2][:2] == [0, 1]
    finally:
        sink.close()


def test_an_odd_size_loses_its_last_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    sink = VideoFileSink(str(path), fps=25.0)
    write_frames(sink, [(321, 241)] * 3, [0.0, 0.04, 0.08], live=False)
    sink.close()
    frames, _ = read_video(path)
    assert [frame.shape[:2] for frame in frames] == [(240, 320)] * 3


def test_an_unknown_extension_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"use one of the extensions .mp4, .m4v, .mov, .mkv, .webm, .avi"):
        VideoFileSink(str(tmp_path / "out.flv"), fps=25.0)


@pytest.mark.parametrize(
    ("suffix", "codec"), [(suffix, codec) for suffix, container in CONTAINERS.items() for codec in container.codecs]
)
def test_every_codec_an_extension_holds_is_written_in_it(tmp_path: Path, suffix: str, codec: str) -> None:
    # when
    path = tmp_path / f"out{suffix}"
    sink = VideoFileSink(str(path), fps=25.0, video_format=choose_format(suffix, codec=codec))
    write_frames(sink, [(320, 240)] * 10, [index / 25 for index in range(10)], live=False)
    sink.close()

    # then
    written, times_s, indices = decoded(path)
    assert written == codec
    assert indices == list(range(10))
    assert times_s == pytest.approx([index / 25 for index in range(10)], abs=1e-3)


def test_crf_and_preset_reach_the_encoder(tmp_path: Path) -> None:
    # when
    path = tmp_path / "out.mp4"
    sink = VideoFileSink(str(path), fps=25.0, video_format=choose_format(".mp4", crf=18, preset="medium"))
    write_frames(sink, [(320, 240)] * 3, [0.0, 0.04, 0.08], live=False)
    sink.close()

    # then x264's settings, which it writes into the stream, are those of medium (ultrafast has subme=0) at crf 18
    settings = path.read_bytes().split(b"options: ", 1)[1].split(b"\0", 1)[0].decode().split()
    assert {"subme=7", "crf=18.0"} <= set(settings)
