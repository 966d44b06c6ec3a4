"""Output files: one run at a time holds each, an existing one is replaced only when asked, and a refused or crashed
run leaves nothing behind that blocks the next.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import has_a_line, read_video, require_asset, start_mnstream, wait_for

from stream.commands import EXIT_OK, EXIT_USAGE
from stream.outputs import OutputLock
from stream.types import UsageError

CORAL = "models/tflite/mobilenet_v1_0.25_128_quant.tflite"


def start_run(video: Path, *args: object) -> subprocess.Popen[str]:
    return start_mnstream(
        "--source", video, "--model", require_asset(CORAL), "--headless", *args, stdout=subprocess.DEVNULL
    )


def test_a_second_lock_on_a_file_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    # given
    path = tmp_path / "out.jsonl"
    first = OutputLock(str(path), option="--jsonl", overwrite=False)

    # when / then
    with pytest.raises(UsageError, match=r"out\.jsonl is being written by another run; wait for it to end"):
        OutputLock(str(path), option="--jsonl", overwrite=True)
    first.release()
    OutputLock(str(path), option="--jsonl", overwrite=True).release()


def test_a_lock_released_unwritten_leaves_no_empty_file_but_keeps_an_existing_one(tmp_path: Path) -> None:
    # given
    new, existing = tmp_path / "new.mp4", tmp_path / "existing.mp4"
    existing.write_bytes(b"")

    # when
    OutputLock(str(new), option="--output", overwrite=False).release()
    OutputLock(str(existing), option="--output", overwrite=True).release()

    # then
    assert not new.exists()
    assert existing.exists()


def test_a_second_run_on_the_same_json_lines_is_refused_and_the_first_loses_nothing(
    tmp_path: Path, video_path: Path
) -> None:
    # given a run writing its JSON lines, held still so that it is surely running while the second one starts
    jsonl = tmp_path / "frames.jsonl"
    first = start_run(video_path, "--jsonl", jsonl)
    wait_for(has_a_line(jsonl), first)
    first.send_signal(signal.SIGSTOP)
    try:
        # when a second run, even one allowed to overwrite, asks for the same file
        second = subprocess.run(
            [sys.executable, "-m", "stream", "--source", str(video_path), "--model", str(require_asset(CORAL))]
            + ["--headless", "--jsonl", str(jsonl), "--overwrite"],
            capture_output=True,
            check=False,
            text=True,
            timeout=120,
        )
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_errors = first.communicate(timeout=120)

    # then the second is refused in one line, and the first wrote every frame, one whole line each
    assert second.returncode == EXIT_USAGE, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"mnstream: error: {jsonl} is being written by another run; wait for it to end or choose another --jsonl"
    ]
    assert first.returncode == EXIT_OK, first_errors
    frames = [json.loads(line)["frame"] for line in jsonl.read_text().splitlines()]
    assert frames == list(range(1394))


def test_a_killed_run_leaves_no_lock_behind(tmp_path: Path, video_path: Path) -> None:
    # given a run killed outright, with no chance to clean up
    jsonl = tmp_path / "frames.jsonl"
    killed = start_run(video_path, "--jsonl", jsonl)
    wait_for(has_a_line(jsonl), killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)

    # when the next run takes the same file
    output = tmp_path / "out.avi"
    rerun = start_run(video_path, "--jsonl", jsonl, "--overwrite", "--output", output)
    _, errors = rerun.communicate(timeout=300)

    # then
    assert rerun.returncode == EXIT_OK, errors
    assert len(jsonl.read_text().splitlines()) == 1394
    assert len(read_video(output)[0]) == 1394


def test_a_refused_run_creates_nothing_and_empties_nothing(tmp_path: Path, video_path: Path) -> None:
    # given yesterday's JSON lines, and a new video path
    jsonl, output = tmp_path / "frames.jsonl", tmp_path / "new.avi"
    jsonl.write_text('{"frame": 0}\n')

    # when a run would replace the JSON lines without --overwrite
    refused = start_run(video_path, "--output", output, "--jsonl", jsonl)
    _, errors = refused.communicate(timeout=120)

    # then
    assert refused.returncode == EXIT_USAGE, errors
    assert "frames.jsonl exists; add --overwrite to replace it" in errors
    assert jsonl.read_text() == '{"frame": 0}\n'
    assert not output.exists()
    assert os.listdir(tmp_path) == ["frames.jsonl"]
