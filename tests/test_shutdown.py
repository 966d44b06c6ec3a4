"""Ctrl-C and SIGTERM in the middle of a run, with real signals: a playable output, the summary, the exit code."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import decode_until_damaged, grown, has_a_line, read_video, require_asset, start_mnstream, wait_for

from stream.commands import EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED, Stopping, run_command

CRASH_SIGNS = ("Traceback", "terminate called", "core dumped", "Fatal Python error", "Segmentation fault")


@pytest.mark.usefixtures("keras_home")
@pytest.mark.parametrize(
    ("signum", "exit_code"),
    [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_TERMINATED), (signal.SIGHUP, EXIT_HANGUP)],
    ids=["ctrl-c", "sigterm", "hang-up"],
)
def test_signal_mid_run_leaves_a_playable_video_and_the_summary(
    tmp_path: Path, video_path: Path, signum: int, exit_code: int
) -> None:
    # given a run converting the real video, frame by frame so that it lasts
    output = tmp_path / "partial.mp4"
    process = start_mnstream("--source", video_path, "--output", output, "--headless", "--batch-size", 1)

    # when the writer has started, the signal comes
    wait_for(grown(output), process)
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
    process = start_mnstream("--source", video_path, "--output", output, "--headless", "--runtime", "tensorflow")
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


@pytest.mark.usefixtures("keras_home")
def test_a_signal_at_any_moment_of_the_model_s_load_ends_the_run_cleanly(tmp_path: Path, video_path: Path) -> None:
    # given how long the default Keras model takes here from the start to its first inferred frame, loaded by
    # h5py and TensorFlow on the inference thread
    command = [sys.executable, "-m", "stream", "--source", str(video_path), "--headless", "--runtime", "tensorflow"]
    load_s = _seconds_to_first_frame([*command, "--jsonl", str(tmp_path / "first.jsonl")])

    # when SIGINT and SIGTERM take turns landing at ten points spread over it
    outcomes = []
    for point in range(10):
        signum, exit_code = [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_TERMINATED)][point % 2]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(load_s * (point + 0.5) / 10)
        process.send_signal(signum)
        signalled_at = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        outcomes.append((point, exit_code, process.returncode, time.monotonic() - signalled_at, stderr))

    # then every run ends with the signal's code, within seconds, and nothing crashed on the way out
    for point, exit_code, returncode, took_s, stderr in outcomes:
        assert returncode == exit_code, f"point {point} of 10 over {load_s:.1f} s: {returncode}\n{stderr}"
        assert took_s < 10, f"point {point}: took {took_s:.1f} s"
        assert not any(sign in stderr for sign in CRASH_SIGNS), f"point {point}: {stderr}"


def _seconds_to_first_frame(command: list[str]) -> float:
    jsonl = Path(command[-1])
    started_at = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(has_a_line(jsonl), process)
        return time.monotonic() - started_at
    finally:
        process.kill()
        process.communicate()


def test_ctrl_c_while_the_program_starts_is_quiet(tmp_path: Path, video_path: Path) -> None:
    # given the int8 model, which needs no TensorFlow: the first half second is Python importing numpy, OpenCV, rich
    model = require_asset("models/tflite/mobilenet_v1_0.25_128_quant.tflite")
    command = [sys.executable, "-m", "stream", "--source", str(video_path), "--model", str(model), "--headless"]

    for delay_s in (0.1, 0.2, 0.3, 0.4, 0.5):
        # when
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay_s)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)

        # then: 130, or killed by the signal itself where it beat Python to installing its handler (a shell says 130)
        assert process.returncode in (EXIT_INTERRUPTED, -signal.SIGINT), f"after {delay_s} s: {stderr}"
        assert "Traceback" not in stderr, f"after {delay_s} s: {stderr}"


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


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 2 MB tmpfs of its own: a disk that fills up a third of the way through the real video."""
    if os.geteuid() != 0:
        message = "mounting a tmpfs needs root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_fails_the_run_and_leaves_what_fitted_playable(full_disk: Path, video_path: Path) -> None:
    # given a video larger than the disk it is written to
    output = full_disk / "annotated.mp4"
    model = require_asset("models/tflite/mobilenet_v1_0.25_128_quant.tflite")
    command = ["--source", str(video_path), "--model", str(model), "--output", str(output), "--headless"]

    # when
    result = subprocess.run(
        [sys.executable, "-m", "stream", *command],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )

    # then the run stops at once with one line naming the file and the cause, and counts no frame it lost
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [f"mnstream: error: cannot write {output}: No space left on device"]
    written = int(re.search(r"written\s+│\s+(\d+)", result.stdout).group(1))
    assert 0 < written < 1394
    # and every fragment that fitted plays
    frames, _, _ = decode_until_damaged(output)
    assert 0 < len(frames) <= written
    assert 0 < len(read_video(output)[0]) <= written


@pytest.mark.usefixtures("keras_home")
def test_a_killed_run_leaves_a_playable_video(tmp_path: Path, video_path: Path) -> None:
    # given a run converting the real video, frame by frame so that it lasts
    output = tmp_path / "killed.mp4"
    process = start_mnstream(
        "--source", video_path, "--output", output, "--headless", "--batch-size", 1, stdout=subprocess.DEVNULL
    )

    # when it is killed once a few fragments are on disk
    wait_for(grown(output), process)
    process.kill()
    process.communicate(timeout=30)

    # then what it wrote plays in PyAV and OpenCV alike, at the source's pace
    frames, times_s, codec = decode_until_damaged(output)
    assert codec == "h264"
    assert 0 < len(frames) < 1394
    assert times_s == pytest.approx([index / 10 for index in range(len(frames))])
    assert len(read_video(output)[0]) == len(frames)


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)  # the dropped interrupt, as Python reports it
def test_an_interrupt_python_drops_inside_a_garbage_collection_callback_still_ends_the_command() -> None:
    # given a command whose Ctrl-C lands while a weakref callback runs, where Python prints the KeyboardInterrupt
    # as "Exception ignored" and goes on
    def body(stopping: Stopping) -> int:
        doomed = type("Doomed", (), {})()
        weakref.finalize(doomed, stopping, signal.SIGINT, None)
        del doomed
        # then a check afterwards raises it, as training does before it keeps its output
        with pytest.raises(KeyboardInterrupt):
            stopping.raise_if_received()
        return 0

    # and the command that returned normally still ends as interrupted
    assert run_command(body, debug=False) == EXIT_INTERRUPTED
