"""JSON lines output: every line valid against the schema, flushed as written, events mode, stdout, bad paths."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, index_frame, require_asset, write_video
from jsonschema import Draft202012Validator

from stream.jsonlines import SCHEMA, JsonLinesSink
from stream.types import Frame, Label, Prediction, UsageError

MACAW = Label(88, "n01818515", "macaw", 0.75)
HOTDOG = Label(934, "n07697537", "hotdog", 0.2)
CAMERA, CLIP = 0, 1
NAMES = {CAMERA: "camera 0", CLIP: "clip.mp4"}
CLIP_FPS = 25.0
VALIDATOR = Draft202012Validator(SCHEMA)


def write(sink: JsonLinesSink, stream_id: int, index: int, stable: Label | None, *, age_s: float = 0.05) -> Frame:
    """Writes one frame captured `age_s` ago in which the model sees a macaw, then a hot dog."""
    image = np.zeros((4, 4, 3), np.uint8)
    position_s = index / CLIP_FPS if stream_id == CLIP else None
    frame = Frame(stream_id, index, image, image, captured_at=time.monotonic() - age_s, position_s=position_s)
    labels = (MACAW, HOTDOG)
    sink.write(frame, Prediction(stream_id, index, labels, 3.0, 1.0, batch_size=1, smoothed=stable))
    return frame


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def test_every_frame_of_every_stream_is_one_valid_line(tmp_path: Path) -> None:
    # given
    path = tmp_path / "run.jsonl"
    sink = JsonLinesSink(str(path), events_only=False, stream_names=NAMES)
    unix_offset_s = time.time() - time.monotonic()

    # when
    frames = []
    for index in range(3):
        frames.append(write(sink, CAMERA, index, MACAW))
        frames.append(write(sink, CLIP, index, None if index == 0 else HOTDOG, age_s=0.2))
    sink.close()

    # then
    lines = read_lines(path)
    for line in lines:
        VALIDATOR.validate(line)
    assert [(line["stream"], line["frame"]) for line in lines] == [(NAMES[f.stream_id], f.index) for f in frames]
    assert [line["source_s"] for line in lines] == [None, 0.0, None, 0.04, None, 0.08]
    assert [line["top1"] for line in lines] == [["n01818515", "macaw", 0.75], None] + [
        ["n01818515", "macaw", 0.75],
        ["n07697537", "hotdog", 0.2],
    ] * 2
    assert all(line["top_k"] == [["n01818515", "macaw", 0.75], ["n07697537", "hotdog", 0.2]] for line in lines)
    for line, frame in zip(lines, frames, strict=True):
        # captured_at is the frame's monotonic time on the UNIX clock; latency runs from it to wall_time
        assert line["captured_at"] == pytest.approx(frame.captured_at + unix_offset_s, abs=0.01)
        assert line["latency_ms"] == pytest.approx((line["wall_time"] - line["captured_at"]) * 1000, abs=0.01)
        assert line["latency_ms"] >= (0.2 if frame.stream_id == CLIP else 0.05) * 1000


def test_lines_can_be_read_while_the_sink_is_open(tmp_path: Path) -> None:
    # given
    path = tmp_path / "run.jsonl"
    sink = JsonLinesSink(str(path), events_only=False, stream_names=NAMES)

    # when / then: each line is on disk as soon as it is written, as `tail -f` needs
    try:
        for index in range(3):
            write(sink, CLIP, index, MACAW)
            assert [line["frame"] for line in read_lines(path)] == list(range(index + 1))
    finally:
        sink.close()


@pytest.mark.parametrize(
    ("events_only", "expected"),
    [
        # each stream's first frame, then each change of its own stable top-1, None included
        (True, [(CAMERA, 0), (CLIP, 0), (CAMERA, 2), (CLIP, 3), (CLIP, 4), (CAMERA, 5)]),
        (False, [(stream_id, index) for index in range(6) for stream_id in (CAMERA, CLIP)]),
    ],
)
def test_events_mode_writes_each_streams_changes(
    tmp_path: Path, events_only: bool, expected: list[tuple[int, int]]
) -> None:
    # given: the two streams' stable top-1 frame by frame, interleaved as the pipeline delivers them
    stable = {
        CAMERA: [MACAW, MACAW, HOTDOG, HOTDOG, HOTDOG, MACAW],
        CLIP: [HOTDOG, HOTDOG, HOTDOG, None, MACAW, MACAW],
    }
    path = tmp_path / "events.jsonl"
    sink = JsonLinesSink(str(path), events_only=events_only, stream_names=NAMES)

    # when
    for index in range(6):
        for stream_id in (CAMERA, CLIP):
            write(sink, stream_id, index, stable[stream_id][index])
    sink.close()

    # then
    names = {name: stream_id for stream_id, name in NAMES.items()}
    assert [(names[line["stream"]], line["frame"]) for line in read_lines(path)] == expected


def test_a_position_carries_no_float_noise(capsys: pytest.CaptureFixture[str]) -> None:
    # given a frame at 300 ms as the decoder reports it, in milliseconds over 1000
    sink = JsonLinesSink("-", events_only=False, stream_names=NAMES)
    image = np.zeros((4, 4, 3), np.uint8)
    frame = Frame(CLIP, 3, image, image, captured_at=time.monotonic(), position_s=300.00000000000006 / 1000)
    assert frame.position_s != 0.3

    # when
    sink.write(frame, Prediction(CLIP, 3, (MACAW,), 3.0, 1.0, batch_size=1))
    sink.close()

    # then the line says 0.3, as the file's clock does
    (line,) = capsys.readouterr().out.splitlines()
    assert '"source_s": 0.3,' in line


def test_dash_writes_to_stdout_and_leaves_it_open(capsys: pytest.CaptureFixture[str]) -> None:
    # given
    sink = JsonLinesSink("-", events_only=False, stream_names=NAMES)

    # when
    write(sink, CLIP, 50, MACAW)
    sink.close()

    # then
    (line,) = capsys.readouterr().out.splitlines()
    VALIDATOR.validate(json.loads(line))
    assert json.loads(line)["source_s"] == 2.0
    assert not sys.stdout.closed


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "missing/run.jsonl",
            r"^--jsonl \S+/missing/run\.jsonl: folder \S+/missing does not exist; create it first$",
        ),
        (
            "a_file/run.jsonl",
            r"^--jsonl \S+/a_file/run\.jsonl: \S+/a_file is a file, not a folder; choose another path$",
        ),
        ("a_file/deeper/run.jsonl", r"^--jsonl \S+/run\.jsonl: \S+/a_file is a file, not a folder; choose another"),
        ("a_folder", r"^--jsonl \S+/a_folder is a folder; give a file name inside it$"),
        ("existing.jsonl", r"^\S+/existing\.jsonl exists; add --overwrite to replace it, or choose another --jsonl$"),
    ],
)
def test_unwritable_target_is_a_usage_error(tmp_path: Path, target: str, message: str) -> None:
    # given
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "existing.jsonl").write_text("{}\n")

    # when / then
    with pytest.raises(UsageError, match=message):
        JsonLinesSink(str(tmp_path / target), events_only=False, stream_names=NAMES)


def test_docs_list_exactly_the_schemas_fields() -> None:
    # given
    text = (REPO / "docs/jsonl.md").read_text()

    # when
    documented = re.findall(r"^\| `(\w+)` \|", text, flags=re.MULTILINE)

    # then
    assert documented == list(SCHEMA["properties"])


def test_with_standard_error_closed_the_file_holds_only_json_lines(tmp_path: Path) -> None:
    # given a run started with standard error and input closed, where LiteRT announces itself on standard error
    video = write_video(tmp_path / "clip.avi", (index_frame(index) for index in range(5)))
    model = require_asset("models/tflite/mobilenet_v1_0.25_128_quant.tflite")
    command = f"exec {sys.executable} -m stream --source {video} --model {model} --headless --jsonl out.jsonl 2>&- <&-"

    # when
    result = subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=False, timeout=120, check=False)

    # then nothing else found its way into the file
    assert result.returncode == 0
    assert [line["frame"] for line in read_lines(tmp_path / "out.jsonl")] == list(range(5))


def test_a_reader_that_goes_away_ends_the_run_quietly(tmp_path: Path) -> None:
    # given JSON lines on standard output, read by a program that stops after the first line (`| head -1`)
    video = write_video(tmp_path / "clip.avi", (index_frame(index) for index in range(2000)))
    model = require_asset("models/tflite/mobilenet_v1_0.25_128_quant.tflite")
    command = [sys.executable, "-m", "stream", "--source", video, "--model", model, "--headless", "--jsonl", "-"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert process.stdout is not None and process.stderr is not None

    # when
    first = json.loads(process.stdout.readline())
    process.stdout.close()
    errors = process.stderr.read().decode()
    process.wait(60)

    # then it ends as command-line tools do when their reader has gone: no error message, exit code 141
    assert first["frame"] == 0
    assert process.returncode == 141, errors
    assert "error" not in errors.lower(), errors


def test_lines_for_still_images_name_the_image(tmp_path: Path) -> None:
    # given two photos in a folder
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("owl.jpg", "bird.bmp"):
        (photos / name).write_bytes(require_asset(f"images/{name}").read_bytes())
    model = require_asset("models/tflite/mobilenet_v1_0.25_128_quant.tflite")

    # when
    command = [sys.executable, "-m", "stream", "--source", photos, "--model", model, "--jsonl", "out.jsonl"]
    subprocess.run(command, cwd=tmp_path, check=True, timeout=120, capture_output=True)

    # then
    lines = read_lines(tmp_path / "out.jsonl")
    for line in lines:
        VALIDATOR.validate(line)
    assert [line["image"] for line in lines] == [str(photos / "bird.bmp"), str(photos / "owl.jpg")]
