"""Output names: one file per stream, never two streams in one file."""

from __future__ import annotations

import pytest

from stream.sinks import output_paths
from stream.types import UsageError


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
