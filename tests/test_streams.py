"""Several streams in one process: every frame of every file, labels per stream, batches across streams,
fairness to a live stream beside a stalled one, and JSON lines from the command line.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import pytest
from helpers import (
    FakeEngine,
    RecordingSink,
    ScriptedReader,
    read_video,
    recognizing,
    require_asset,
    run_cli,
    write_video,
)
from jsonschema import Draft202012Validator

from stream.cli import main
from stream.commands import EXIT_OK
from stream.jsonlines import SCHEMA
from stream.pipeline import Pipeline
from stream.queues import StopFlag
from stream.sources import Reconnect
from stream.types import Frame, Prediction, SourceKind

INT8_V2 = "models/tflite/mobilenet_v2_1.0_224_quant.tflite"


def photo_clip(folder: Path, photo: Path, frames: int) -> Path:
    image = cv2.resize(cv2.imread(str(photo)), (320, 240))
    return write_video(folder / f"{photo.stem}.avi", (image for _ in range(frames)), fps=10)


def batches(predictions: list[Prediction]) -> list[list[int]]:
    """The stream ids in each model call: one worker puts a batch's results out together, in order."""
    calls, position = [], 0
    while position < len(predictions):
        size = predictions[position].batch_size
        calls.append([prediction.stream_id for prediction in predictions[position : position + size]])
        position += size
    return calls


@pytest.mark.parametrize("stream_count", [2, 4])
def test_every_frame_of_every_file_with_its_own_labels(tmp_path: Path, assets: Path, stream_count: int) -> None:
    # given the real video and clips of two photos, each its own stream
    video = require_asset("videos/one-by-one-person-detection.mp4")
    parrot = photo_clip(tmp_path, assets / "images" / "parrot.jpg", 30)
    hot_dog = photo_clip(tmp_path, assets / "images" / "hot_dog.jpg", 45)
    sources = [parrot, hot_dog, video, parrot][:stream_count]
    names = ["parrot.avi", "hot_dog.avi", "one-by-one-person-detection.mp4", "parrot.avi (2)"][:stream_count]
    files = ["parrot.mp4", "hot_dog.mp4", "one-by-one-person-detection.mp4", "parrot_2.mp4"][:stream_count]
    outputs = tmp_path / "out"
    outputs.mkdir()
    jsonl = tmp_path / "frames.jsonl"

    # when
    arguments = [arg for source in sources for arg in ("--source", source)]
    code, printed = run_cli(
        *arguments,
        "--model",
        require_asset(INT8_V2),
        "--headless",
        "--output",
        f"{outputs}/{{name}}.mp4",
        "--jsonl",
        jsonl,
    )

    # then each stream's annotated file holds all its frames, and the JSON lines name the right things per stream
    assert code == EXIT_OK, printed
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for source, name, file in zip(sources, names, files, strict=True):
        expected = len(read_video(source)[0])
        written = outputs / file
        assert len(read_video(written)[0]) == expected, written
        assert [line["frame"] for line in lines if line["stream"] == name] == list(range(expected))
    for name, label in [("parrot.avi", "macaw"), ("hot_dog.avi", "hotdog")]:
        assert {line["top1"][1] for line in lines if line["stream"] == name} == {label}


def test_one_worker_batches_frames_of_several_streams_together() -> None:
    # given two file streams and a slow engine, so both have frames waiting at each call
    readers = [ScriptedReader(40, stream_id=0), ScriptedReader(40, stream_id=1)]
    recorder = RecordingSink()
    engine = FakeEngine(delay_s=0.005)

    # when
    Pipeline(readers, recognizing(engine), [recorder], batch_size=8).run()

    # then every frame came out once, each stream in order, and model calls held frames of both streams
    for stream_id in (0, 1):
        assert [p.frame_index for p in recorder.predictions if p.stream_id == stream_id] == list(range(40))
    assert any(len(set(call)) == 2 for call in batches(recorder.predictions))


class StalledReader(ScriptedReader):
    """A camera that opened and then never delivers, until the run stops."""

    def __init__(self, stream_id: int) -> None:
        super().__init__(0, kind=SourceKind.CAMERA, stream_id=stream_id)
        self.release = threading.Event()

    def read(self) -> None:
        self.release.wait()


class StopsAfter(RecordingSink):
    """Stops the run once a stream's given frame has reached it."""

    def __init__(self, stop: StopFlag, *, stream_id: int, index: int) -> None:
        super().__init__()
        self._stop = stop
        self._last = (stream_id, index)

    def write(self, frame: Frame, prediction: Prediction) -> None:
        super().write(frame, prediction)
        if (frame.stream_id, frame.index) == self._last:
            self._stop.set()


def test_a_stalled_stream_does_not_hold_up_a_live_one() -> None:
    # given a live stream of 60 frames beside a stalled one, and a run that ends with the live stream's last frame
    stop, ready = StopFlag(), threading.Event()
    live = ScriptedReader(60, kind=SourceKind.CAMERA, stream_id=0, starts=ready)
    stalled = StalledReader(stream_id=1)
    recorder = StopsAfter(stop, stream_id=0, index=59)
    pipeline = Pipeline(
        [live, stalled],
        recognizing(FakeEngine),
        [recorder],
        batch_size=8,
        queue_size=64,
        reconnect=Reconnect(attempts=0),
        stop=stop,
        model_ready=ready,
    )

    # when it runs (a batcher that waited for the stalled stream would never reach the end; the watchdog ends it)
    watchdog = threading.Timer(60, stop.set)
    watchdog.start()
    pipeline.run()
    watchdog.cancel()
    stalled.release.set()

    # then every live frame came through, in order, and the stalled stream sent nothing
    assert [p.frame_index for p in recorder.predictions if p.stream_id == 0] == list(range(60))
    assert not [p for p in recorder.predictions if p.stream_id == 1]


def test_jsonl_lines_follow_the_schema_and_events_are_the_changes(tmp_path: Path, assets: Path) -> None:
    # given a clip that cuts from the parrot to the hot dog and back
    images = [cv2.resize(cv2.imread(str(assets / "images" / f)), (320, 240)) for f in ("parrot.jpg", "hot_dog.jpg")]
    clip = write_video(tmp_path / "cuts.avi", [images[0]] * 15 + [images[1]] * 15 + [images[0]] * 15, fps=15)
    every, events = tmp_path / "every.jsonl", tmp_path / "events.jsonl"

    # when the same run writes every frame, then only the changes
    for target, extra in ((every, ()), (events, ("--events",))):
        code, printed = run_cli(
            "--source", clip, "--model", require_asset(INT8_V2), "--headless", "--jsonl", target, *extra
        )
        assert code == EXIT_OK, printed

    # then every line is valid, and the events are exactly the frames where the shown label changed
    validator = Draft202012Validator(SCHEMA)
    all_lines = [json.loads(line) for line in every.read_text().splitlines()]
    for line in all_lines:
        validator.validate(line)
    assert [line["frame"] for line in all_lines] == list(range(45))
    shown = [line["top1"][0] for line in all_lines]
    changes = [line for i, line in enumerate(all_lines) if i == 0 or shown[i] != shown[i - 1]]
    event_lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(line["frame"], line["top1"][1]) for line in event_lines] == [
        (line["frame"], line["top1"][1]) for line in changes
    ]
    assert [line["top1"][1] for line in event_lines] == ["macaw", "hotdog", "macaw"]


def test_jsonl_to_standard_output_keeps_it_clean(
    tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = photo_clip(tmp_path, assets / "images" / "parrot.jpg", 5)
    code = main(["--source", str(clip), "--model", str(require_asset(INT8_V2)), "--headless", "--jsonl", "-"])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert [json.loads(line)["frame"] for line in out.splitlines()] == list(range(5))


def test_allow_shows_only_the_listed_classes(tmp_path: Path, assets: Path) -> None:
    # given a parrot clip, and only hot dogs and pretzels allowed
    clip = photo_clip(tmp_path, assets / "images" / "parrot.jpg", 5)
    jsonl = tmp_path / "allowed.jsonl"

    # when
    code, printed = run_cli(
        "--source", clip, "--model", require_asset(INT8_V2), "--headless", "--jsonl", jsonl, "--allow", "hotdog,pretzel"
    )

    # then nothing else is ever named
    assert code == EXIT_OK, printed
    for line in map(json.loads, jsonl.read_text().splitlines()):
        assert {label[1] for label in line["top_k"]} <= {"hotdog", "pretzel"}
        assert line["top1"] is None or line["top1"][1] in {"hotdog", "pretzel"}
