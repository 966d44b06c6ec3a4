"""A video file's audio in the annotated copy: copied or re-encoded, in sync, as long as the video, or dropped."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ONSET_S, SMALL_MODEL, decode_until_damaged, require_asset, soundtrack, write_clip_with_audio
from rich.console import Console

from stream.cli import main
from stream.commands import EXIT_INTERRUPTED, EXIT_OK

FRAME_S = 0.1
SYNC_S = 0.01
"""How far the tone may move against the frames: well under a frame, a lip-sync error nobody sees."""
END_S = 0.05
"""How far the audio may end from the video: one audio frame (21 ms of AAC, 20 of Opus) and a margin."""


def annotate(source: Path, output: Path, *options: str) -> str:
    console = Console(file=io.StringIO(), width=200)
    code = main(
        ["--source", str(source), "--model", str(require_asset(SMALL_MODEL)), "--output", str(output), "--headless"]
        + list(options),
        console=console,
    )
    assert code == EXIT_OK, console.file.getvalue()
    return console.file.getvalue()


@pytest.mark.parametrize(
    ("clip", "suffix", "audio_codec", "copied"),
    [
        ("aac_clip", ".mp4", "aac", True),
        ("aac_clip", ".mkv", "aac", True),
        ("aac_clip", ".mov", "aac", True),
        ("aac_clip", ".webm", "opus", False),
        ("opus_clip", ".webm", "opus", True),
        ("opus_clip", ".mp4", "opus", True),
        ("opus_clip", ".mov", "aac", False),
    ],
)
def test_the_source_s_audio_goes_along_in_sync_and_as_long_as_the_video(
    request: pytest.FixtureRequest, tmp_path: Path, clip: str, suffix: str, audio_codec: str, copied: bool
) -> None:
    # given a clip whose tone starts with its 30th frame
    source = request.getfixturevalue(clip)
    output = tmp_path / f"annotated{suffix}"

    # when
    annotate(source, output)

    # then the copy's audio decodes, is copied packet for packet where the container holds its codec, and starts
    # and ends with the video
    frames, times_s, _ = decode_until_damaged(output)
    track, original = soundtrack(output), soundtrack(source)
    assert len(frames) == 100
    assert track.codec == audio_codec
    assert (track.packets == original.packets) is copied
    assert abs(track.start_s - times_s[0]) <= END_S
    assert abs(track.end_s - (times_s[-1] + FRAME_S)) <= END_S
    # and the tone still starts with frame 30
    assert abs(track.onset_s - times_s[30]) <= SYNC_S


def test_audio_that_starts_after_the_video_keeps_its_place(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, video_path: Path
) -> None:
    # given a clip whose sound starts half a second after its picture
    source = write_clip_with_audio(
        tmp_path_factory.mktemp("clips") / "late.mp4",
        video_path,
        frames=40,
        audio_codec="aac",
        onset_s=ONSET_S,
        audio_start_s=0.5,
    )
    output = tmp_path / "annotated.mp4"

    # when
    annotate(source, output)

    # then it starts half a second in, and the tone with frame 30
    _, times_s, _ = decode_until_damaged(output)
    track = soundtrack(output)
    assert abs(track.start_s - (times_s[0] + 0.5)) <= END_S
    assert abs(track.onset_s - times_s[30]) <= SYNC_S


def test_no_audio_drops_it(tmp_path: Path, aac_clip: Path) -> None:
    output = tmp_path / "silent.mp4"
    annotate(aac_clip, output, "--no-audio")
    assert soundtrack(output) is None
    assert len(decode_until_damaged(output)[0]) == 100


def test_an_avi_goes_without_audio_and_says_so_once(
    tmp_path: Path, aac_clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "annotated.avi"
    annotate(aac_clip, output)
    assert soundtrack(output) is None
    warning = f"mnstream: warning: {output}: an AVI file keeps no audio; write .mp4, .mkv or .webm to keep it"
    assert capsys.readouterr().err.splitlines() == [warning]


def test_each_stream_s_file_gets_its_own_source_s_audio(tmp_path: Path, aac_clip: Path, opus_clip: Path) -> None:
    annotate(aac_clip, tmp_path / "{name}.mkv", "--source", str(opus_clip))
    assert soundtrack(tmp_path / "aac.mkv").packets == soundtrack(aac_clip).packets
    assert soundtrack(tmp_path / "opus.mkv").packets == soundtrack(opus_clip).packets


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory, video_path: Path) -> Path:
    """The whole shared video (139 s) with a soundtrack: long enough to stop a run in the middle."""
    path = tmp_path_factory.mktemp("clips") / "long.mp4"
    return write_clip_with_audio(path, video_path, frames=1394, audio_codec="aac", onset_s=ONSET_S)


def start_annotating(source: Path, output: Path) -> subprocess.Popen[str]:
    """A run in its own process on the largest int8 model, frame by frame on one thread, so that it lasts; it
    returns once a few fragments are on disk.
    """
    model = require_asset("models/tflite/mobilenet_v2_1.0_224_quant.tflite")
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "--source", str(source), "--output", str(output), "--headless"]
        + ["--model", str(model), "--batch-size", "1", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    deadline = time.monotonic() + 120
    while not (output.exists() and output.stat().st_size > 300_000):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    return process


def test_ctrl_c_keeps_the_audio_up_to_the_last_frame_written(tmp_path: Path, long_clip: Path) -> None:
    # given
    output = tmp_path / "interrupted.mp4"
    process = start_annotating(long_clip, output)

    # when
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)

    # then the video and its audio both decode, and the audio ends with the last frame written
    assert process.returncode == EXIT_INTERRUPTED, stderr
    written = int(re.search(r"written\s+│\s+(\d+)", stdout).group(1))
    frames, times_s, _ = decode_until_damaged(output)
    track = soundtrack(output)
    assert 30 < len(frames) == written < 1394
    assert track.codec == "aac"
    assert abs(track.end_s - (times_s[-1] + FRAME_S)) <= END_S
    assert abs(track.onset_s - times_s[30]) <= SYNC_S


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_killed_run_leaves_sound_with_its_pictures(tmp_path: Path, long_clip: Path, suffix: str) -> None:
    # given
    output = tmp_path / f"killed{suffix}"
    process = start_annotating(long_clip, output)

    # when
    process.kill()
    process.communicate(timeout=30)

    # then the audio went to disk with the video, as it came, not at the end: the two reach within a fragment
    # (or a cluster) of each other
    _, times_s, _ = decode_until_damaged(output)
    track = soundtrack(output)
    assert track is not None, "no audio reached the disk"
    assert times_s[-1] > 5
    assert abs(track.end_s - times_s[-1]) <= 1.5
    assert abs(track.onset_s - times_s[30]) <= SYNC_S
