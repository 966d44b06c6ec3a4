"""Output names (one file per stream, never two streams in one file) and what the console shows: rates, names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import (
    SMALL_MODEL,
    MjpegServer,
    index_frame,
    jpeg_frames,
    require_asset,
    run_cli,
    run_on_stream,
    write_video,
)

from stream.commands import EXIT_OK
from stream.types import UsageError
from stream.wiring import output_paths


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


def test_stream_names_that_look_like_console_markup_are_shown_as_they_are(tmp_path: Path) -> None:
    # given two streams whose names rich would read as markup, one of them a closing tag that opens nothing
    video = write_video(tmp_path / "clip.avi", [index_frame(index) for index in range(5)])
    names = ["[/bold] door", "[red]yard"]
    config = tmp_path / "run.toml"
    config.write_text("".join(f'[[input.streams]]\nsource = "{video}"\nname = "{name}"\n' for name in names))

    # when
    code, output = run_cli("--config", config, "--model", require_asset(SMALL_MODEL), "--headless")

    # then the run ends well and every line that names a stream names it as given
    assert code == EXIT_OK, output
    for name in names:
        assert re.search(rf"^{re.escape(name)} #0 ", output, re.MULTILINE), output
    assert f"mnstream: {names[0]}, {names[1]}" in output
