"""`mnstream bench` end to end on a short clip (int8 .tflite and a small Keras MobileNet), and its arithmetic."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import FakeEngine, RecordingSink, recognizing, require_asset, write_video
from rich.console import Console

from stream.bench import main
from stream.bench.instruments import FirstFrames
from stream.bench.live import PacedReader, summarise_live
from stream.bench.report import checks, decode_bound_fps, plot, recommendation, throughput_ratio
from stream.bench.results import (
    QUANTIZED_ROWS,
    ROWS,
    LiveResult,
    ModelFormat,
    RowResult,
    RowStatus,
    failed,
    median_run,
    skipped,
)
from stream.config import StreamConfig
from stream.pipeline import Pipeline
from stream.queues import StopFlag
from stream.sources import NO_RECONNECT, Probed, open_reader
from stream.types import DropPolicy

V2_INT8 = "models/tflite/mobilenet_v2_1.0_224_quant.tflite"
ROW_FIELDS = {f for f in RowResult.__dataclass_fields__}
LIVE_FIELDS = {f for f in LiveResult.__dataclass_fields__} | {"bound_ms", "growth_ms"}
CHECK_FIELDS = {"name", "value", "unit", "limit", "at_least", "passed"}


def run_bench(tmp_path: Path, *args: object, frames: int = 60) -> tuple[int, str, dict]:
    """Runs `mnstream bench` on `frames` frames and a 3 s live run; returns the exit code, the console and the
    JSON.
    """
    console = Console(file=io.StringIO(), width=200)
    output = tmp_path / "bench.json"
    argv = [*args, "--frames", frames, "--live-seconds", 3, "--json", output]
    code = main([str(arg) for arg in argv], console=console)
    return code, console.file.getvalue(), json.loads(output.read_text())


def assert_complete(document: dict, *, skipped_rows: dict[str, str]) -> None:
    """Every row is there with every field; the measured ones have numbers, the skipped ones say why."""
    assert list(document["rows"]) == list(ROWS)
    for name, row in document["rows"].items():
        assert set(row) == ROW_FIELDS, name
        if name in skipped_rows:
            assert row["status"] == "skipped" and skipped_rows[name] in row["reason"], row
            continue
        assert row["status"] == "ok", row
        assert row["frames"] > 0 and row["frames_per_s"] > 0, row
        assert row["wall_s"] > 0 and row["peak_rss_mb"] > 0, row
        assert row["stage_ms"]["inference"] > 0, row
        if name not in ("ceiling", *QUANTIZED_ROWS):
            assert row["first_frame_s"] > 0, row
    live = document["rows"]["live"]["live"]
    assert set(live) == LIVE_FIELDS
    assert live["frames_shown"] > 0 and live["latency_p95_ms"] > 0 and live["bound_ms"] > live["inference_p95_ms"]
    assert all(set(check) == CHECK_FIELDS for check in document["checks"])
    assert {"setup", "machine"} <= set(document)


def test_tflite_model_measures_every_row_without_tensorflow(tmp_path: Path, video_path: Path) -> None:
    # given
    model = require_asset(V2_INT8)
    has_mediapipe = importlib.util.find_spec("mediapipe") is not None

    # when
    code, printed, document = run_bench(tmp_path, "--source", video_path, "--model", model)

    # then the Keras-only baseline says why it is skipped, and MediaPipe runs wherever it is installed
    assert code == 0, printed
    skipped_rows = {row: "Keras model" for row in ("baseline", "float16", "int8", "tensorflow", "cold")}
    if not has_mediapipe:
        skipped_rows["mediapipe"] = "pip install mediapipe"
    assert_complete(document, skipped_rows=skipped_rows)
    rows = document["rows"]
    assert not any(row["tensorflow_imported"] for row in rows.values() if row["status"] == "ok")
    assert rows["headless"]["frames"] == rows["video"]["frames"] == rows["ceiling"]["frames"] == 60
    # the ceiling is the fastest of the engine and LiteRT alone in each layout that fits the model's fixed batch
    layouts = rows["ceiling"]["layouts_fps"]
    assert rows["ceiling"]["frames_per_s"] == max(layouts.values())
    assert "the engine, as the pipeline calls it" in layouts and len(layouts) >= 3, layouts
    assert all("1 frame a call" in layout for layout in layouts if layout.startswith("LiteRT")), layouts
    # the int8 targets are judged, each with a verdict where its rows ran
    verdicts = {check["name"]: check["passed"] for check in document["checks"] if check["limit"] is not None}
    assert set(verdicts) >= {"pipeline headless / engine ceiling", "time to first annotated frame", "pipeline peak RSS"}
    assert verdicts["pipeline headless / engine ceiling"] is not None
    assert (verdicts["pipeline headless / MediaPipe"] is not None) == has_mediapipe
    for title in ("engine ceiling", "pipeline + video", "ratios and targets", "capture to display"):
        assert title in printed


@pytest.mark.usefixtures("keras_home")
def test_keras_model_measures_the_seed_baseline(tmp_path: Path, video_path: Path) -> None:
    # when
    code, printed, document = run_bench(
        tmp_path, "--source", video_path, "--model", "mobilenet", "--alpha", 0.25, "--input-size", 128
    )

    # then the baseline runs and MediaPipe, which needs a .tflite, says so
    assert code == 0, printed
    assert_complete(document, skipped_rows={"mediapipe": ".tflite"})
    rows = document["rows"]
    assert rows["baseline"]["batch_size"] == 1 and rows["baseline"]["tensorflow_imported"]
    assert set(rows["baseline"]["stage_ms"]) == {"decode", "preprocess", "inference", "postprocess", "overlay"}
    # the pipeline rows load the model the ceiling row compiled, without TensorFlow; its own row uses it
    assert not any(rows[row]["tensorflow_imported"] for row in ("headless", "video", "live"))
    assert rows["tensorflow"]["tensorflow_imported"]
    # the converting run has its own empty cache, and a float model runs in every layout, batched or not
    assert rows["cold"]["tensorflow_imported"] and rows["cold"]["first_frame_s"] > 0
    layouts = rows["ceiling"]["layouts_fps"]
    assert rows["ceiling"]["frames_per_s"] == max(layouts.values())
    assert any("8 frames a call" in layout for layout in layouts), layouts
    assert any("1 frame a call" in layout for layout in layouts), layouts
    assert all(0 <= rows[row]["top1_agreement"] <= 1 for row in ("float16", "int8"))
    # the Keras-on-LiteRT targets are judged; the seed baseline is only compared
    verdicts = {check["name"]: check for check in document["checks"]}
    assert verdicts["pipeline + video / seed baseline"]["value"] is not None
    for name in (
        "pipeline headless / TensorFlow kernels headless",
        "pipeline headless / decode-bound ceiling",
        "pipeline + video / decode-bound ceiling",
        "first frame, converting (empty cache)",
    ):
        assert verdicts[name]["passed"] is not None, name
    assert document["recommendation"].startswith("use ") and document["recommendation"].split(":")[0] in printed
    assert document["machine"]["cpus"] >= 1


def test_a_clip_too_short_to_measure_is_said_to_be(
    tmp_path: Path, video_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # when the file rows read 10 frames
    code = main(
        [str(arg) for arg in ("--source", video_path, "--model", require_asset(V2_INT8), "--rows", "ceiling")]
        + ["--frames", "10", "--json", str(tmp_path / "bench.json")],
        console=Console(file=io.StringIO()),
    )

    # then the results come with a word on what they are worth
    assert code == 0
    assert "the file rows read 10 frames, too few to measure a steady rate" in capsys.readouterr().err


def test_rows_option_runs_only_those_rows(tmp_path: Path, video_path: Path) -> None:
    # when
    code, printed, document = run_bench(
        tmp_path, "--source", video_path, "--model", require_asset(V2_INT8), "--rows", "ceiling,baseline"
    )

    # then
    assert code == 0, printed
    assert list(document["rows"]) == ["ceiling", "baseline"]
    assert document["rows"]["baseline"]["status"] == "skipped"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "no-such-video.mp4"], "is not a file"),
        (["--model", "model.tflite", "--batch-size", "0"], "--batch-size: must be >= 1"),
    ],
)
def test_bad_usage_exits_2_before_measuring(
    args: list[str], message: str, video_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # when
    code = main(["--source", str(video_path), *args], console=Console(file=io.StringIO()))

    # then
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--rows", "ceiling,fastest"], ["--frames", "0"], ["--live-seconds", "-1"]])
def test_bad_option_values_are_usage_errors(args: list[str], video_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", str(video_path), *args])
    assert exit_info.value.code == 2


def test_plot_without_matplotlib_says_how_to_install_it(
    video_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given matplotlib looks uninstalled
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a)
    )

    # when
    code = main(["--source", str(video_path), "--plot", "bench.png"], console=Console(file=io.StringIO()))

    # then
    assert code == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def measured(row: str, frames_per_s: float, **fields: object) -> RowResult:
    return RowResult(row, RowStatus.OK, frames=100, frames_per_s=frames_per_s, **fields)


def live(*, p95_ms: float, first_third_ms: float, last_third_ms: float, inference_p95_ms: float = 30.0) -> LiveResult:
    return LiveResult(
        fps=30.0,
        duration_s=20.0,
        frames_read=600,
        frames_shown=590,
        dropped=10,
        latency_p50_ms=p95_ms / 2,
        latency_p95_ms=p95_ms,
        latency_max_ms=p95_ms * 2,
        first_third_p95_ms=first_third_ms,
        last_third_p95_ms=last_third_ms,
        inference_mean_ms=inference_p95_ms / 2,
        inference_p95_ms=inference_p95_ms,
    )


def test_int8_targets_pass_and_fail_on_the_issue_s_thresholds() -> None:
    # given a pipeline at 0.9x its ceiling and 1.9x MediaPipe headless, 1.5x with video; live within its bound
    rows = {
        "ceiling": measured("ceiling", 200.0),
        "headless": measured("headless", 180.0, peak_rss_mb=250.0),
        "video": measured("video", 142.5, first_frame_s=1.2, peak_rss_mb=280.0),
        "mediapipe": measured("mediapipe", 95.0),
        "live": measured(
            "live", 29.0, peak_rss_mb=310.0, live=live(p95_ms=90.0, first_third_ms=80.0, last_third_ms=100.0)
        ),
    }

    # when
    found = {check.name: check for check in checks(rows, ModelFormat.TFLITE)}

    # then
    assert found["pipeline headless / engine ceiling"].value == pytest.approx(0.9)
    assert found["pipeline headless / engine ceiling"].passed is True
    assert found["pipeline headless / MediaPipe"].passed is False
    assert found["pipeline + video / MediaPipe"].passed is True
    assert (
        found["pipeline + video / engine ceiling"].limit is None
        and found["pipeline + video / engine ceiling"].passed is None
    )
    assert found["pipeline headless / seed baseline"].value is None
    assert found["live p95 latency"].limit == pytest.approx(30.0 + 2 * 1000 / 30)
    assert found["live p95 latency"].passed is True
    assert found["live p95 growth, last third - first"].value == pytest.approx(20.0)
    assert found["live p95 growth, last third - first"].passed is True
    assert found["time to first annotated frame"].passed is False  # 1.2 s over the 1 s for .tflite
    assert found["pipeline peak RSS"].value == 310.0 and found["pipeline peak RSS"].passed is False


def test_float_targets_against_ceiling_and_seed_baseline() -> None:
    # given
    rows = {
        "ceiling": measured("ceiling", 100.0),
        "baseline": measured("baseline", 15.0),
        "headless": measured("headless", 99.0),
        "video": measured("video", 89.0, first_frame_s=4.0, peak_rss_mb=1100.0),
        "mediapipe": skipped("mediapipe", "needs a .tflite"),
        "live": measured("live", 30.0, live=live(p95_ms=200.0, first_third_ms=60.0, last_third_ms=200.0)),
    }

    # when
    found = {check.name: check for check in checks(rows, ModelFormat.KERAS)}

    # then
    assert found["pipeline + video / engine ceiling"].passed is False  # 0.89x < 0.9x
    assert found["pipeline + video / seed baseline"].value == pytest.approx(89 / 15)
    assert found["pipeline + video / seed baseline"].passed is False  # 5.9x < 6x
    assert found["pipeline headless / engine ceiling"].limit is None
    assert (
        found["pipeline headless / MediaPipe"].value is None and found["pipeline headless / MediaPipe"].passed is None
    )
    assert found["live p95 latency"].passed is False
    assert found["live p95 growth, last third - first"].passed is False
    assert found["time to first annotated frame"].passed is True
    assert found["pipeline peak RSS"].passed is True


def test_keras_on_litert_targets_against_tensorflow_and_the_decode_bound() -> None:
    # given a ceiling of 200 frames/s whose frames take 2.5 ms to decode: 1 / (5 ms + 2.5 ms) = 133 frames/s at most
    ceiling = dataclasses.replace(measured("ceiling", 200.0), stage_ms={"decode": 2.5})
    rows = {
        "ceiling": ceiling,
        "tensorflow": measured("tensorflow", 40.0),
        "headless": measured("headless", 125.0, first_frame_s=0.4, peak_rss_mb=200.0),
        "video": measured("video", 100.0, first_frame_s=0.5, peak_rss_mb=250.0),
        "cold": measured("cold", 120.0, first_frame_s=10.5, peak_rss_mb=1100.0),
    }

    # when
    found = {check.name: check for check in checks(rows, ModelFormat.COMPILED)}

    # then
    assert decode_bound_fps(rows) == pytest.approx(400 / 3)
    assert found["pipeline headless / TensorFlow kernels headless"].value == pytest.approx(125 / 40)
    assert found["pipeline headless / TensorFlow kernels headless"].passed is True
    assert found["pipeline headless / decode-bound ceiling"].value == pytest.approx(125 * 3 / 400)
    assert found["pipeline headless / decode-bound ceiling"].passed is True  # 0.94 >= 0.9
    assert found["pipeline + video / decode-bound ceiling"].passed is False  # 0.75 < 0.8
    assert found["time to first annotated frame"].passed is True
    assert found["first frame, converting (empty cache)"].passed is False  # 10.5 > 10
    # the converting run loads TensorFlow: the cached runs' memory target is not its
    assert found["pipeline peak RSS"].value == 250.0 and found["pipeline peak RSS"].passed is True


@pytest.mark.parametrize(
    ("float16", "int8", "advice"),
    [
        ((110.0, 1.0), (180.0, 0.97), "use int8"),
        ((110.0, 1.0), (180.0, 0.90), "use float16"),
        ((95.0, 1.0), (180.0, 0.80), "use float32"),
    ],
    ids=["int8 fast and faithful", "int8 unfaithful", "nothing beats float32 faithfully"],
)
def test_recommendation_is_the_fastest_faithful_precision(
    float16: tuple[float, float], int8: tuple[float, float], advice: str
) -> None:
    rows = {
        "ceiling": measured("ceiling", 100.0),
        "float16": dataclasses.replace(measured("float16", float16[0]), top1_agreement=float16[1]),
        "int8": dataclasses.replace(measured("int8", int8[0]), top1_agreement=int8[1]),
    }
    assert recommendation(rows).startswith(advice)


def test_ratio_needs_both_rows_measured() -> None:
    rows = {"video": measured("video", 50.0), "baseline": skipped("baseline", "a .tflite model")}
    assert throughput_ratio(rows, "video", "baseline") is None
    assert throughput_ratio(rows, "video", "ceiling") is None


def test_live_summary_splits_the_run_into_thirds_by_capture_time() -> None:
    # given 90 frames over 3 s whose latency grows from 10 to 99 ms
    captured_at = np.arange(90) / 30
    latency_ms = np.arange(90) + 10.0

    # when
    summary = summarise_live(
        captured_at,
        latency_ms,
        fps=30.0,
        duration_s=3.0,
        frames_read=95,
        dropped=5,
        inference_mean_ms=8.0,
        inference_p95_ms=12.0,
    )

    # then
    assert summary.frames_shown == 90 and summary.dropped == 5
    assert summary.latency_p50_ms == pytest.approx(54.5)
    assert summary.latency_max_ms == 99.0
    assert summary.first_third_p95_ms == pytest.approx(np.percentile(latency_ms[:30], 95))
    assert summary.last_third_p95_ms == pytest.approx(np.percentile(latency_ms[60:], 95))
    assert summary.growth_ms == pytest.approx(60.0)
    assert summary.bound_ms == pytest.approx(12.0 + 2000 / 30)


def test_live_summary_of_nothing_shown_has_no_numbers() -> None:
    empty = np.empty(0)
    summary = summarise_live(
        empty, empty, fps=30.0, duration_s=1.0, frames_read=0, dropped=0, inference_mean_ms=None, inference_p95_ms=None
    )
    assert summary.latency_p95_ms is None and summary.growth_ms is None and summary.bound_ms is None


def test_repeats_take_turns_and_report_each_row_s_median_run(tmp_path: Path, video_path: Path) -> None:
    # when every row runs three times
    code, printed, document = run_bench(
        tmp_path,
        "--source",
        video_path,
        "--model",
        require_asset(V2_INT8),
        "--rows",
        "ceiling,headless",
        "--repeat",
        "3",
        frames=30,
    )

    # then the rows took turns, and each row is its median run, with every run's throughput beside it
    assert code == 0, printed
    order = re.findall(r"^(engine ceiling|pipeline headless):", printed, re.MULTILINE)
    assert order == ["engine ceiling", "pipeline headless"] * 3
    for row in document["rows"].values():
        assert row["frames"] == 30
        runs = row["frames_per_s_runs"]
        assert len(runs) == 3 and runs == sorted(runs)
        assert row["frames_per_s"] == runs[1]


def test_median_run_ignores_runs_that_measured_nothing() -> None:
    runs = [measured("ceiling", 300.0), failed("ceiling", "killed"), measured("ceiling", 100.0)]
    assert median_run(runs).frames_per_s == 100.0
    assert median_run(runs).frames_per_s_runs == [100.0, 300.0]
    assert median_run([failed("ceiling", "killed")]).status is RowStatus.FAILED


def test_row_result_survives_the_json_line() -> None:
    # given
    row = measured(
        "live",
        29.5,
        wall_s=4.0,
        stage_ms={"inference": 5.0, "decode": None},
        live=live(p95_ms=50.0, first_third_ms=40.0, last_third_ms=45.0),
    )

    # when
    restored = RowResult.from_dict(json.loads(json.dumps(row.to_dict())))

    # then
    assert restored == row


def test_paced_reader_is_a_live_source_that_loops_the_file(tmp_path: Path) -> None:
    # given a 5-frame video replayed for 12 frames
    video = write_video(tmp_path / "five.avi", [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(5)])
    starts = threading.Event()
    starts.set()
    reader = PacedReader(StreamConfig(source=str(video)), fps=1000.0, frames=12, starts=starts, stop=StopFlag())

    # when
    frames = []
    while (item := reader.read()) is not None:
        frames.append(item.image)
    reader.close()

    # then it is dropped from like a camera, and wraps around to the first frame
    assert reader.info.drop_policy is DropPolicy.DROP_OLDEST
    assert len(frames) == 12
    assert abs(int(frames[5].mean()) - int(frames[0].mean())) < 8


def test_the_live_replay_starts_when_the_model_is_ready_however_slow_it_loads(tmp_path: Path) -> None:
    # given a replay far shorter than the model's load: 12 frames at 1000 fps, against a 0.5 s load
    video = write_video(tmp_path / "five.avi", [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(5)])
    stop, model_ready = StopFlag(), threading.Event()
    reader = PacedReader(StreamConfig(source=str(video)), fps=1000.0, frames=12, starts=model_ready, stop=stop)
    sink = RecordingSink()

    def slow_engine() -> FakeEngine:
        time.sleep(0.5)
        return FakeEngine()

    # when
    Pipeline(
        [Probed(reader)], recognizing(slow_engine), [sink], reconnect=NO_RECONNECT, stop=stop, model_ready=model_ready
    ).run()

    # then the whole replay came after the load: nothing was read only to be dropped
    assert len(sink.frames) == 12


def test_a_replay_waiting_for_the_model_ends_when_the_run_stops(tmp_path: Path) -> None:
    video = write_video(tmp_path / "five.avi", [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(5)])
    stop = StopFlag()
    reader = PacedReader(StreamConfig(source=str(video)), fps=30.0, frames=12, starts=threading.Event(), stop=stop)
    stop.set()
    assert reader.read() is None


def test_first_frames_ends_the_source_early(video_path: Path) -> None:
    reader = FirstFrames(open_reader(StreamConfig(source=str(video_path))), 3)
    count = 0
    while reader.read() is not None:
        count += 1
    reader.close()
    assert count == 3 and reader.info.frame_count == 3


def test_plot_draws_the_comparison(tmp_path: Path) -> None:
    # given
    rows = {
        "ceiling": measured("ceiling", 200.0),
        "headless": measured("headless", 180.0),
        "live": measured("live", 30.0, live=live(p95_ms=60.0, first_third_ms=55.0, last_third_ms=58.0)),
    }

    # when
    plot(rows, tmp_path / "bench.png", title="synthetic")

    # then one blue bar per throughput row, as long as its rate, and the live latency in orange beside them
    image = cv2.imread(str(tmp_path / "bench.png"))
    bar_lengths = [int(run.sum()) for run in _runs_of_rows(_pixels_of(image, TAB_BLUE))]
    assert len(bar_lengths) == 2
    assert bar_lengths[0] / bar_lengths[1] == pytest.approx(200 / 180, rel=0.02)
    assert _pixels_of(image, TAB_ORANGE).sum() > 1000


TAB_BLUE, TAB_ORANGE = (180, 119, 31), (14, 127, 255)
"""matplotlib's default blue and orange, as BGR."""


def _pixels_of(image: np.ndarray, bgr: tuple[int, int, int]) -> np.ndarray:
    return np.all(np.abs(image.astype(int) - bgr) <= 2, axis=2)


def _runs_of_rows(mask: np.ndarray) -> list[np.ndarray]:
    """Each horizontal band of rows that hold the colour, as the mask of its widest row."""
    rows = np.flatnonzero(mask.any(axis=1))
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if len(rows) else []
    return [max((mask[row] for row in band), key=np.sum) for band in bands]
