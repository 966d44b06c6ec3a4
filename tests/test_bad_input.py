"""Bad input, as users hit it: one line naming the problem and the fix, exit code 2, no traceback, no hang.

Each case runs the real command in its own process, so a thread left running or a hang shows up as a timeout.
Odd but valid frames (gray, BGRA, 16-bit, 1x1, 8K) must simply work.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import BLOCK_TENSORFLOW, index_frame, read_video, require_asset, run_mnstream, write_video

from stream.sources import FAILED_READS_AT_THE_END

HANG_S = 60
"""Far beyond the few seconds a bad input takes: only a hang gets near it."""


def mnstream(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_mnstream(*args, timeout_s=HANG_S, cwd=cwd)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, keras_home: Path) -> dict[str, Path]:
    import keras

    folder = tmp_path_factory.mktemp("bad")
    (folder / "not_a_video.mp4").write_text("this is not a video")
    (folder / "junk.tflite").write_bytes(b"\x00not a flatbuffer" * 64)
    (folder / "junk.keras").write_text("not a keras model")
    (folder / "three_labels.txt").write_text("cat\ndog\nbird\n")
    (folder / "binary.txt").write_bytes(bytes(range(128, 256)))
    (folder / "unknown_key.toml").write_text("[model]\nalhpa = 0.5\n")
    (folder / "wrong_type.toml").write_text('[model]\ntop_k = "five"\n')
    write_video(folder / "clip.avi", (index_frame(index) for index in range(3)))
    write_video(folder / "earlier.mp4", (index_frame(index) for index in range(3)))
    (folder / "earlier_folder").mkdir()
    (folder / "a_file").write_text("a file where a folder should be")
    inputs = keras.Input((10,))
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs)).save(folder / "tabular.keras")
    return {path.name: path for path in folder.iterdir()}


CORAL = "models/tflite/mobilenet_v1_0.25_128_quant.tflite"
VIDEO = "videos/one-by-one-person-detection.mp4"
CORAL_ON_VIDEO = ["--source", "{asset:" + VIDEO + "}", "--headless", "--model", "{asset:" + CORAL + "}"]

# (case, arguments, what the one line must say); {name} is a file from `bad_files`, {asset:path} a shared asset.
BAD_INPUTS = [
    ("missing file", ["--source", "missing.mp4", "--headless"], r"video file missing.mp4 does not exist; check"),
    ("not a video", ["--source", "{not_a_video.mp4}", "--headless"], r"is not a video OpenCV can decode"),
    ("no camera", ["--camera", "7", "--headless"], r"camera 7 cannot be opened: .* try another --camera index"),
    (
        "unreachable url",
        ["--source", "rtsp://127.0.0.1:9/live", "--headless"],
        r"stream rtsp://127.0.0.1:9/live cannot",
    ),
    ("nothing to read", ["--headless"], r"nothing to read: give --camera INDEX or --source"),
    ("negative camera", ["--camera", "-1", "--headless"], r"--camera: expected a camera index such as 0, got '-1'"),
    ("empty source", ["--source=", "--headless"], r"--source: is empty; give a video file, URL"),
    (
        "output is the source",
        ["--source", "{clip.avi}", "--output", "{clip.avi}", "--headless"],
        r"clip.avi is a source of this run, and writing it would destroy it",
    ),
    (
        "json lines on the source",
        ["--source", "{clip.avi}", "--jsonl", "{clip.avi}", "--headless"],
        r"clip.avi is a source of this run",
    ),
    (
        "json lines on the video",
        ["--source", "{clip.avi}", "--output", "same.mp4", "--jsonl", "same.mp4", "--headless"],
        r"same.mp4 is given to two outputs",
    ),
    (
        "missing model",
        ["--source", "{asset:" + VIDEO + "}", "--headless", "--model", "gone.tflite"],
        r"gone.tflite does",
    ),
    (
        "unknown model",
        ["--source", "{asset:" + VIDEO + "}", "--headless", "--model", "mobilenet_v9"],
        r"neither a file",
    ),
    (
        "corrupt tflite",
        ["--source", "{asset:" + VIDEO + "}", "--headless", "--model", "{junk.tflite}"],
        r"not a TensorF",
    ),
    ("corrupt keras", ["--source", "{asset:" + VIDEO + "}", "--headless", "--model", "{junk.keras}"], r"cannot be loa"),
    (
        "not an image model",
        ["--source", "{asset:" + VIDEO + "}", "--headless", "--model", "{tabular.keras}"],
        r"takes input \(None, 10\); an image classifier takes \(N, height, width, 3\)",
    ),
    (
        "labels count",
        [*CORAL_ON_VIDEO, "--labels", "{three_labels.txt}"],
        r"has 1001 classes but its labels have 3",
    ),
    (
        "missing labels",
        ["--source", "{asset:" + VIDEO + "}", "--headless", "--labels", "gone.txt"],
        r"gone.txt cannot be",
    ),
    (
        "output folder",
        ["--source", "{asset:" + VIDEO + "}", "--output", "/no/such/out.mp4"],
        r"folder /no/such does not",
    ),
    (
        "output type",
        ["--source", "{asset:" + VIDEO + "}", "--output", "out.gif"],
        r"out.gif: use one of the extensions",
    ),
    ("output of images", ["--source", "{asset:images/owl.jpg}", "--output", "out.mp4"], r"--output writes video"),
    (
        "unknown key",
        ["--source", "{asset:" + VIDEO + "}", "--config", "{unknown_key.toml}"],
        r"unknown config key 'model.alhpa'",
    ),
    (
        "wrong type",
        ["--source", "{asset:" + VIDEO + "}", "--config", "{wrong_type.toml}"],
        r"model.top_k: expected int, got str",
    ),
    (
        "events without json lines",
        ["--source", "{asset:" + VIDEO + "}", "--headless", "--events"],
        r"^mnstream: error: --events: chooses what --jsonl writes; add --jsonl",
    ),
    (
        "weights for a tflite model",
        ["--source", "{asset:" + VIDEO + "}", "--model", "{asset:" + CORAL + "}", "--weights", "w.h5"],
        r"error: --weights: a .tflite model carries its own weights; drop --weights",
    ),
    (
        "export of a tflite model",
        ["export", "--model", "{asset:" + CORAL + "}", "--float16", "--output", "again.tflite"],
        r"is a TensorFlow Lite model already; export converts a Keras model",
    ),
    (
        "binary config",
        ["--source", "{asset:" + VIDEO + "}", "--config", "{binary.txt}"],
        r"binary.txt is not valid TOML",
    ),
    (
        "binary labels",
        [*CORAL_ON_VIDEO, "--labels", "{binary.txt}"],
        r"binary.txt is not UTF-8 text; check --labels",
    ),
    (
        "missing config",
        ["--source", "{asset:" + VIDEO + "}", "--config", "gone.toml"],
        r"config file gone.toml does not exist",
    ),
    ("batch size 0", ["--source", "{asset:" + VIDEO + "}", "--batch-size", "0"], r"error: --batch-size: must be >= 1"),
    (
        "threshold 2",
        ["--source", "{asset:" + VIDEO + "}", "--threshold", "2"],
        r"error: --threshold: must be between 0 and 1",
    ),
    ("not a number", ["--source", "{asset:" + VIDEO + "}", "--top-k", "five"], r"argument --top-k: invalid int value"),
    ("queue size -1", [*CORAL_ON_VIDEO, "--queue-size", "-1"], r"error: --queue-size: must be >= 1$"),
    (
        "output inside a file",
        [*CORAL_ON_VIDEO, "--output", "{a_file}/out.mp4"],
        r"a_file is a file, not a folder",
    ),
    (
        "existing output",
        [*CORAL_ON_VIDEO, "--output", "{earlier.mp4}"],
        r"earlier\.mp4 exists; add --overwrite to replace it, or choose another --output",
    ),
    (
        "existing json lines",
        [*CORAL_ON_VIDEO, "--jsonl", "{three_labels.txt}"],
        r"three_labels\.txt exists; add --overwrite to replace it, or choose another --jsonl",
    ),
    (
        "bench results into a missing folder",
        ["bench", "--source", "{asset:" + VIDEO + "}", "--json", "gone/bench.json"],
        r"--json gone/bench.json: folder gone does not exist",
    ),
    (
        "bench results onto a folder",
        ["bench", "--source", "{asset:" + VIDEO + "}", "--json", "{earlier_folder}"],
        r"--json \S+earlier_folder is a folder",
    ),
    (
        "one output, two streams",
        ["--source", "{asset:" + VIDEO + "}", "--source", "{asset:" + VIDEO + "}", "--output", "out.mp4"],
        r"--output out.mp4 would be written by 2 streams; put \{name\} in it",
    ),
    ("alpha of a model file", [*CORAL_ON_VIDEO, "--alpha", "0.5"], r"--alpha: sets the width of a named MobileNet"),
    (
        "input size of a model file",
        [*CORAL_ON_VIDEO, "--input-size", "160"],
        r"--input-size: sets the input of a named MobileNet",
    ),
    (
        "threads on tensorflow",
        ["--source", "{asset:" + VIDEO + "}", "--headless", "--runtime", "tensorflow", "--threads", "2"],
        r"--threads: sets LiteRT's threads",
    ),
    ("windows, headless", [*CORAL_ON_VIDEO, "--window-per-stream"], r"--window-per-stream: chooses the windows"),
    (
        "images and video",
        ["--source", "{asset:images/owl.jpg}", "--source", "{asset:" + VIDEO + "}", "--headless"],
        r"still images and video streams cannot be mixed",
    ),
]


@pytest.mark.parametrize(("case", "args", "message"), BAD_INPUTS, ids=[case for case, _, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, bad_files: dict[str, Path], case: str, args: list[str], message: str
) -> None:
    # given
    def fill(arg: str) -> str:
        if arg.startswith("{asset:"):
            return str(require_asset(arg[len("{asset:") : -1]))
        return re.sub(r"\{([^}]+)\}", lambda name: str(bad_files[name.group(1)]), arg)

    # when
    result = mnstream(*map(fill, args), cwd=tmp_path)

    # then
    errors = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and errors[0].startswith("mnstream: error: "), result.stderr
    assert re.search(message, errors[0]), errors[0]


WITHOUT_TENSORFLOW = BLOCK_TENSORFLOW + "from stream.__main__ import main\nsys.exit(main())\n"


@pytest.mark.parametrize("runtime", ["litert", "tensorflow"])
def test_a_keras_model_without_tensorflow_says_what_to_do_before_reading_a_frame(
    tmp_path: Path, video_path: Path, keras_home: Path, runtime: str
) -> None:
    # given no TensorFlow, and no converted model in the cache
    command = [sys.executable, "-c", WITHOUT_TENSORFLOW, "--source", str(video_path), "--headless"]
    environment = {**os.environ, "MNSTREAM_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}

    # when a Keras model is run
    result = subprocess.run(
        [*command, "--runtime", runtime, "--output", str(tmp_path / "out.mp4")],
        capture_output=True,
        check=False,
        text=True,
        timeout=HANG_S,
        env=environment,
    )

    # then it is refused with what to do, before any frame is read or any output made
    assert result.returncode == 2, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "needs TensorFlow, which is not installed" in errors[0], result.stderr
    assert "pip install 'mnstream[cpu]'" in errors[0] and ".tflite" in errors[0]
    assert "read" not in result.stdout and not (tmp_path / "out.mp4").exists()


def write_image(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


ODD_FRAMES = {
    "gray": np.full((120, 160), 128, np.uint8),
    "bgra": np.full((120, 160, 4), 128, np.uint8),
    "16-bit": np.full((120, 160, 3), 40_000, np.uint16),
    "1x1": np.full((1, 1, 3), 200, np.uint8),
    "8k": np.random.default_rng(0).integers(0, 255, (4320, 7680, 3), dtype=np.uint8),
}


@pytest.mark.parametrize("kind", list(ODD_FRAMES))
def test_odd_frames_are_classified(tmp_path: Path, kind: str) -> None:
    # given an image of an unusual format, through the fast int8 model
    photo = write_image(tmp_path / f"{kind}.png", ODD_FRAMES[kind])
    model = require_asset(CORAL)

    # when
    result = mnstream("--source", photo, "--model", model, "--top-k", 1, cwd=tmp_path)

    # then it gets a label like any other photo
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{photo}: [('n"), result.stdout


def _decodable_frames(path: Path) -> int:
    """Frames OpenCV decodes from a damaged file, reading past undecodable ones as the capture loop does."""
    capture = cv2.VideoCapture(str(path))
    decoded = failed_in_a_row = 0
    while failed_in_a_row < FAILED_READS_AT_THE_END:
        ok, _ = capture.read()
        decoded, failed_in_a_row = (decoded + 1, 0) if ok else (decoded, failed_in_a_row + 1)
    capture.release()
    return decoded


def test_truncated_video_processes_what_is_readable(tmp_path: Path, video_path: Path) -> None:
    # given the real video cut at 60% of its bytes
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(video_path.read_bytes()[: video_path.stat().st_size * 6 // 10])
    readable = _decodable_frames(truncated)
    output = tmp_path / "out.mp4"

    # when
    result = mnstream(
        "--source", truncated, "--model", require_asset(CORAL), "--headless", "--output", output, cwd=tmp_path
    )

    # then every readable frame is in a playable output, and the user is told the file ended early
    assert result.returncode == 0, result.stderr
    assert 0 < readable < 1394
    assert len(read_video(output)[0]) == readable
    assert re.search(r"mnstream: warning: truncated.mp4 ended after \d+ of the 1394 frames", result.stderr)
