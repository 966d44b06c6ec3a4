"""Ctrl-C and SIGTERM in the middle of a run, with real signals: a playable output, the summary, the exit code."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import read_video

from stream.cli import EXIT_INTERRUPTED, EXIT_TERMINATED


@pytest.mark.usefixtures("keras_home")
@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_TERMINATED)]
)
def test_signal_mid_run_leaves_a_playable_video_and_the_summary(
    tmp_path: Path, video_path: Path, signum: int, exit_code: int
) -> None:
    # given a run converting the real video, frame by frame so that it lasts
    output = tmp_path / "partial.mp4"
    command = [sys.executable, "-m", "stream", "--source", str(video_path), "--output", str(output), "--headless"]
    process = subprocess.Popen(
        [*command, "--batch-size", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )

    # when the writer has started, the signal comes
    deadline = time.monotonic() + 120
    while not (output.exists() and output.stat().st_size > 100_000):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be signalled"
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)

    # then it exits with the signal's code, the video plays, and it holds exactly the frames the summary counts
    assert process.returncode == exit_code, stderr
    written = int(re.search(r"written\s+│\s+(\d+)", stdout).group(1))
    frames, _ = read_video(output)
    assert 0 < len(frames) == written < 1394
    assert "Traceback" not in stderr


@pytest.mark.usefixtures("keras_home")
@pytest.mark.parametrize("signals", [1, 2], ids=["ctrl-c", "ctrl-c twice"])
def test_ctrl_c_while_the_model_loads_exits_promptly(tmp_path: Path, video_path: Path, signals: int) -> None:
    # given a run still importing TensorFlow and building the model
    output = tmp_path / "never.mp4"
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "--source", str(video_path), "--output", str(output), "--headless"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    assert process.poll() is None, process.communicate()

    # when
    for _ in range(signals):
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=30)

    # then it stops with the interrupt's code, no traceback, and no half-written video
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert not output.exists() or len(read_video(output)[0]) > 0
