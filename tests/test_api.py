"""The Python API, through `import stream` only: the generator, a run with callbacks, the recognizer alone."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import SMALL_MODEL, MjpegServer, jpeg_frames, read_video, require_asset

import stream
from stream.events import Event, FrameWritten, LabelChanged, RunEnded, SourceBack, SourceLost, StreamEnded

INT8_V2 = "models/tflite/mobilenet_v2_1.0_224_quant.tflite"
VIDEO_FRAMES = 1394


def mnstream_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("mnstream-")]


def test_importing_the_package_loads_no_runtime_and_changes_nothing_in_the_process() -> None:
    # given a fresh interpreter that notes what a library could change (after OpenCV, whose import sets its own
    # Qt paths)
    script = """
import json, logging, os, signal, sys
import cv2
environment, handlers = dict(os.environ), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
import stream
names = [stream.Run, stream.frames, stream.Classifier, stream.Prediction, stream.ConfigError]
print(json.dumps({
    "runtimes": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "ai_edge_litert")),
    "environment_changed": dict(os.environ) != environment,
    "signals_changed": handlers != {s: signal.getsignal(s) for s in handlers},
    "logging_configured": bool(logging.getLogger().handlers or logging.getLogger("stream").handlers),
}))
"""
    # when
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    # then
    assert json.loads(done.stdout) == {
        "runtimes": [],
        "environment_changed": False,
        "signals_changed": False,
        "logging_configured": False,
    }
    assert done.stderr == ""


def test_the_generator_gives_every_frame_of_the_video_in_order_with_images_to_keep(video_path: Path) -> None:
    # given
    kept: dict[int, np.ndarray] = {}
    indices = []

    # when
    for frame, prediction in stream.frames(video_path, model=require_asset(SMALL_MODEL)):
        assert frame.index == prediction.frame_index
        indices.append(frame.index)
        if frame.index % 300 == 0:
            kept[frame.index] = frame.image

    # then every frame came, once, in order, and the images kept are the video's own frames, untouched
    assert indices == list(range(VIDEO_FRAMES))
    assert not mnstream_threads()
    decoded, _ = read_video(video_path)
    for index, image in kept.items():
        np.testing.assert_array_equal(image, decoded[index])


def test_the_generator_on_the_reliable_photos_gives_their_labels(reliable_photos: list[tuple[Path, str]]) -> None:
    # given each photo as a stream of its own
    photos = [photo for photo, _ in reliable_photos]

    # when
    seen = {
        Path(frame.origin): prediction.smoothed.name
        for frame, prediction in stream.frames(photos, model=require_asset(INT8_V2), top_k=3)
    }

    # then
    assert seen == dict(reliable_photos)


def test_the_classifier_labels_the_reliable_photos_one_by_one_and_in_a_batch(
    reliable_photos: list[tuple[Path, str]],
) -> None:
    # given the photos as a user's own arrays: BGR, and one of them gray
    images = [cv2.imread(str(photo)) for photo, _ in reliable_photos]
    expected = [name for _, name in reliable_photos]

    # when
    with stream.Classifier(require_asset(INT8_V2), top_k=3) as classifier:
        batch = classifier.classify_batch(images)
        one_by_one = [classifier.classify(image) for image in images]
        gray = classifier.classify(cv2.cvtColor(images[0], cv2.COLOR_BGR2GRAY))
        for not_an_image in [
            np.zeros((4, 4, 7), np.uint8),
            np.zeros((4, 4, 2), np.uint8),
            np.zeros((0, 0, 3), np.uint8),
        ]:
            with pytest.raises(ValueError, match="image"):
                classifier.classify(not_an_image)

    # then
    assert [prediction.smoothed.name for prediction in batch] == expected
    assert [prediction.labels[0].name for prediction in one_by_one] == expected
    assert all(len(prediction.labels) == 3 for prediction in batch)
    assert [prediction.frame_index for prediction in batch] == list(range(len(images)))
    assert gray.labels


def test_stop_from_another_thread_ends_a_live_run_at_once_and_leaves_a_playable_video(
    tmp_path: Path, video_path: Path
) -> None:
    # given a live MJPEG stream that would go on for minutes, and a run writing it to a file
    server = MjpegServer(jpeg_frames(video_path, count=25), parts=10_000, interval_s=0.04)
    output = tmp_path / "door.mp4"
    events: list[Event] = []
    written: list[FrameWritten] = []
    well_under_way = threading.Event()

    def watch(event: Event) -> None:
        events.append(event)
        if isinstance(event, FrameWritten):
            written.append(event)
            if len(written) == 30:
                well_under_way.set()

    with server:
        run = stream.Run(server.url, on_event=watch, video=output, model=require_asset(SMALL_MODEL))
        run.start()
        assert well_under_way.wait(120), "no frame written"

        # when another thread stops it
        stopper = threading.Thread(target=run.stop)
        stopped_at = time.monotonic()
        stopper.start()
        run.join()
        ended_s = time.monotonic() - stopped_at
        stopper.join()

    # then it ended within a second, told its end, and the file holds every frame written
    assert ended_s < 1.0, f"the run took {ended_s:.2f} s to end"
    assert not run.running
    assert isinstance(events[-1], RunEnded)
    frames, _ = read_video(output)
    assert len(frames) == run.stats.counters.written >= 30
    assert not mnstream_threads()


@pytest.mark.parametrize("failing", ["on_prediction", "on_event"])
def test_a_callback_that_raises_stops_the_run_and_join_raises_its_exception_once(
    video_path: Path, failing: str
) -> None:
    # given a callback that fails on the tenth frame
    failure = ValueError("the door is jammed")
    calls = []

    def on_prediction(frame: stream.Frame, prediction: stream.Prediction) -> None:
        calls.append(frame.index)
        if frame.index == 9:
            raise failure

    def on_event(event: Event) -> None:
        if isinstance(event, FrameWritten):
            calls.append(event.index)
            if event.index == 9:
                raise failure

    callback = {"on_prediction": on_prediction, "on_event": on_event}[failing]
    run = stream.Run(video_path, model=require_asset(SMALL_MODEL), **{failing: callback})

    # when
    run.start()
    with pytest.raises(ValueError) as raised:
        run.join()
    run.join()

    # then the callback's own exception came out, once, and it was not called again after it
    assert raised.value is failure
    assert calls == list(range(10))
    assert run.stats.counters.written < VIDEO_FRAMES
    assert not mnstream_threads()


@pytest.mark.parametrize("ending", ["break", "garbage collected"])
def test_ending_the_generator_early_closes_everything(video_path: Path, ending: str) -> None:
    # given
    predictions = stream.frames(video_path, model=require_asset(SMALL_MODEL))

    # when
    if ending == "break":
        for frame, _ in predictions:
            if frame.index == 5:
                break
    else:
        next(predictions)
    assert mnstream_threads() or ending == "break"
    del predictions
    gc.collect()

    # then
    assert not mnstream_threads()


def test_label_changes_reach_on_event_in_frame_order(video_path: Path) -> None:
    # given
    changes: list[LabelChanged] = []
    shown: list[str | None] = []

    def on_prediction(frame: stream.Frame, prediction: stream.Prediction) -> None:
        shown.append(prediction.smoothed.name if prediction.smoothed else None)

    def on_event(event: Event) -> None:
        if isinstance(event, LabelChanged):
            changes.append(event)

    run = stream.Run(
        video_path, on_prediction=on_prediction, on_event=on_event, model=require_asset(INT8_V2), half_life=0.5
    )

    # when
    run.run()

    # then one event for the first frame and one for each frame whose shown label differs from the one before
    expected = [index for index, name in enumerate(shown) if index == 0 or name != shown[index - 1]]
    assert [change.frame_index for change in changes] == expected
    assert [change.label.name if change.label else None for change in changes] == [shown[i] for i in expected]
    assert 1 < len(changes) < VIDEO_FRAMES / 10


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": 0}, "top_k: must be >= 1"),
        ({"top_k": "5"}, "top_k: expected int, got str ('5')"),
        ({"topk": 3}, "unknown option 'topk'"),
        ({"allow": ["macaw"], "deny": ["hotdog"]}, "--allow and --deny cannot be combined"),
        ({"video": "out.mp4", "crf": 99}, "crf"),
    ],
)
def test_bad_options_are_refused_with_the_command_line_s_one_line_errors(
    video_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(stream.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        stream.Run(video_path, **options)
    assert "\n" not in str(raised.value)


def test_options_come_from_a_config_file_and_keywords_override_it(tmp_path: Path, assets: Path) -> None:
    # given a config file with the model, the top-k and a stream
    config = tmp_path / "door.toml"
    config.write_text(
        f'[model]\nmodel = "{assets / INT8_V2}"\ntop_k = 2\n\n'
        f'[[input.streams]]\nsource = "{assets / "images" / "parrot.jpg"}"\n'
    )

    # when
    from_file = [prediction for _, prediction in stream.frames(config=config)]
    overridden = [prediction for _, prediction in stream.frames(config=config, top_k=4)]

    # then
    assert [len(prediction.labels) for prediction in from_file] == [2]
    assert [len(prediction.labels) for prediction in overridden] == [4]
    assert from_file[0].smoothed.name == "macaw"


def test_join_before_start_is_refused_rather_than_taken_for_the_end(video_path: Path) -> None:
    run = stream.Run(video_path, model=require_asset(INT8_V2))
    with pytest.raises(RuntimeError, match=r"call start\(\) before join\(\)"):
        run.join()
    assert not run.running and not mnstream_threads()


def test_a_source_that_cannot_be_opened_fails_at_start_and_leaves_nothing_open(tmp_path: Path) -> None:
    run = stream.Run(tmp_path / "missing.mp4", jsonl=tmp_path / "out.jsonl")
    with pytest.raises(stream.SourceError, match="missing.mp4 does not exist"):
        run.start()
    assert not (tmp_path / "out.jsonl").exists()
    assert not mnstream_threads()


def test_the_api_reference_builds_from_the_docstrings(tmp_path: Path) -> None:
    # when the reference is built as the README says
    subprocess.run(
        [sys.executable, "-m", "pdoc", "stream", "stream.events", "-o", tmp_path], check=True, capture_output=True
    )

    # then every public name, with the run's methods, and the events have their entries
    package = (tmp_path / "stream.html").read_text()
    for name in [*stream.__all__, "Run.start", "Run.stop", "Run.join", "Classifier.classify_batch"]:
        assert f'id="{name}"' in package, name
    assert 'id="LabelChanged"' in (tmp_path / "stream" / "events.html").read_text()


def test_a_live_source_lost_and_back_is_told_to_on_event(video_path: Path) -> None:
    # given a live stream that drops its connection once, then ends for good
    server = MjpegServer(jpeg_frames(video_path, count=10), parts=40, interval_s=0.02, cut_after=[15])
    events: list[Event] = []
    told = (SourceLost, SourceBack, StreamEnded, RunEnded)

    # when
    with server:
        stream.Run(
            server.url,
            on_event=events.append,
            model=require_asset(SMALL_MODEL),
            reconnect_attempts=1,
            reconnect_delay_s=0.0,
        ).run()

    # then: lost and back after the cut, lost for good at the end
    assert [type(event) for event in events if isinstance(event, told)] == [
        SourceLost,
        SourceBack,
        SourceLost,
        StreamEnded,
        RunEnded,
    ]
