"""Ctrl-C and SIGTERM in the middle of a run, with real signals: a playable output, the summary, the exit code."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import read_video, require_asset

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


def test_ctrl_c_while_a_stream_url_opens_exits_at_once(tmp_path: Path) -> None:
    # given a stream server that accepts the connection and then sends nothing, so that FFmpeg waits for its
    # network timeout (10 s)
    server = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{server.getsockname()[1]}/live.mjpg"
    model = require_asset("models/tflite/mobilenet_v1_0.25_128_quant.tflite")
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "--source", url, "--model", str(model), "--headless"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        connection, _ = server.accept()
        time.sleep(0.5)
        assert process.poll() is None, process.communicate()

        # when
        interrupted_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        took_s = time.monotonic() - interrupted_at
        connection.close()
    finally:
        server.close()

    # then it did not sit out the network timeout
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert took_s < 5, f"exit took {took_s:.1f} s after Ctrl-C"
    assert "Traceback" not in stderr
