"""The command line as users run it: real video in, annotated video out; images; console output; errors."""

from __future__ import annotations

import ast
import collections
import json
import logging
import re
import signal
from pathlib import Path

import cv2
import pytest
from helpers import (
    decode_until_damaged,
    index_frame,
    read_index,
    read_video,
    require_asset,
    run_cli,
    write_timed_video,
    write_video,
)

from stream.cli import main
from stream.commands import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, report_error

pytestmark = pytest.mark.usefixtures("keras_home")

PEOPLE_WEAR = {"miniskirt", "suit", "jean", "gown", "jersey", "trench_coat", "cardigan", "sweatshirt", "lab_coat"}
"""ImageNet has no person class: MobileNet names the clothes of the people in the sample video."""


def test_real_video_to_annotated_copy_keeps_every_frame(tmp_path: Path, video_path: Path) -> None:
    # given
    output = tmp_path / "annotated.mp4"
    source = cv2.VideoCapture(str(video_path))
    expected_size = (int(source.get(cv2.CAP_PROP_FRAME_WIDTH)), int(source.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    expected_fps = source.get(cv2.CAP_PROP_FPS)
    source.release()
    expected_frames = len(read_video(video_path)[0])

    # when
    jsonl = tmp_path / "frames.jsonl"
    code, printed = run_cli("--source", video_path, "--output", output, "--jsonl", jsonl, "--headless")

    # then the output plays, with the input's frame count, resolution and FPS, and the summary says so
    assert code == EXIT_OK, printed
    frames, fps = read_video(output)
    assert len(frames) == expected_frames
    assert (frames[0].shape[1], frames[0].shape[0]) == expected_size
    assert fps == pytest.approx(expected_fps)
    _, times_s, codec = decode_until_damaged(output)
    assert codec == "h264"
    assert times_s == pytest.approx([index / expected_fps for index in range(expected_frames)])
    assert re.search(rf"read\s+│\s+{expected_frames}\s", printed)
    assert re.search(rf"written\s+│\s+{expected_frames}\s", printed)
    assert re.search(r"dropped\s+│\s+0\s", printed)
    # and every frame is labelled, mostly with what the people walking through it wear
    shown = [line["top1"] for line in map(json.loads, jsonl.read_text().splitlines())]
    assert len(shown) == expected_frames and all(shown)
    worn = sum(label[1] in PEOPLE_WEAR for label in shown)
    assert worn > 0.5 * expected_frames, collections.Counter(label[1] for label in shown).most_common(5)


def test_runtime_tensorflow_runs_keras_kernels_and_compiles_nothing(
    assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an empty model cache
    monkeypatch.setenv("MNSTREAM_CACHE", str(tmp_path / "cache"))

    # when
    code, printed = run_cli("--source", assets / "images" / "parrot.jpg", "--runtime", "tensorflow")

    # then the photo is recognised as on LiteRT, and nothing was compiled
    assert code == EXIT_OK, printed
    assert "'macaw'" in printed
    assert not (tmp_path / "cache").exists()


def test_single_image_prints_top5_like_decode_predictions(assets: Path) -> None:
    # when
    code, printed = run_cli("--source", assets / "images" / "parrot.jpg")

    # then one line: the file, then [(wnid, name, score), ...] best first
    assert code == EXIT_OK
    path, listed = printed.strip().split(": ", 1)
    assert path.endswith("parrot.jpg")
    top5 = ast.literal_eval(listed)
    assert len(top5) == 5
    assert top5[0][:2] == ("n01818515", "macaw") and top5[0][2] > 0.9
    assert [score for _, _, score in top5] == sorted((score for _, _, score in top5), reverse=True)


def test_folder_of_images_prints_one_line_each_in_order(assets: Path, reliable_photos: list[tuple[Path, str]]) -> None:
    code, printed = run_cli("--source", assets / "images", "--top-k", 1, "--batch-size", 4)
    assert code == EXIT_OK
    lines = dict(line.split(": ", 1) for line in printed.strip().splitlines())
    assert list(lines) == sorted(lines)
    for photo, name in reliable_photos:
        assert ast.literal_eval(lines[str(photo)])[0][1] == name


def test_glob_of_images(assets: Path) -> None:
    code, printed = run_cli("--source", f"{assets}/images/*.jpg", "--top-k", 1)
    assert code == EXIT_OK
    assert len(printed.strip().splitlines()) == len(list((assets / "images").glob("*.jpg")))


def test_headless_console_names_what_is_in_the_clip(tmp_path: Path, assets: Path) -> None:
    # given a clip of three photos, a second each
    scenes = [("parrot.jpg", "macaw"), ("hot_dog.jpg", "hotdog"), ("bird.bmp", "chickadee")]
    images = [cv2.resize(cv2.imread(str(assets / "images" / file)), (640, 480)) for file, _ in scenes]
    clip = write_video(tmp_path / "photos.avi", (image for image in images for _ in range(10)), fps=10)

    # when
    code, printed = run_cli("--source", clip, "--headless", "--log-interval", 60)

    # then each scene's label is logged when it appears, in order, with FPS and latency
    assert code == EXIT_OK, printed
    logged = [line for line in printed.splitlines() if line.startswith("photos.avi #")]
    tops = [line.split()[2] for line in logged]
    assert tops == [name for _, name in scenes], logged
    assert all(re.search(r"(\d+\.\d|-) fps\s+\d+ ms$", line) for line in logged)


def test_config_file_and_flags(tmp_path: Path, assets: Path) -> None:
    # given a config that asks for two labels per image
    config = tmp_path / "mine.toml"
    config.write_text("[model]\ntop_k = 2\n")
    photo = assets / "images" / "bird.bmp"

    # then the file applies, and a flag overrides it
    _, from_file = run_cli("--config", config, "--source", photo)
    _, from_flag = run_cli("--config", config, "--source", photo, "--top-k", 3)
    assert len(ast.literal_eval(from_file.split(": ", 1)[1])) == 2
    assert len(ast.literal_eval(from_flag.split(": ", 1)[1])) == 3


def test_window_without_a_display_says_to_use_headless_and_leaves_the_outputs_alone(
    tmp_path: Path, video_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given no display, and the JSON lines of an earlier run that this one may replace
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text('{"frame": 0}\n')

    # when
    code, _ = run_cli("--source", video_path, "--jsonl", earlier, "--overwrite")

    # then the run is refused before any output is opened
    assert code == EXIT_USAGE
    assert "add --headless" in capsys.readouterr().err
    assert earlier.read_text() == '{"frame": 0}\n'


def test_a_run_gives_ctrl_c_back_when_it_ends(video_path: Path) -> None:
    handlers = [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
    run_cli("--source", video_path, "--headless", "--model", "nope.keras")
    assert [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == handlers


def test_help_explains_sources_models_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    text = capsys.readouterr().out
    assert exited.value.code == 0
    for expected in ("--camera", "--source", "--model", "--output", "--overwrite", "--headless", "Exit codes", "129"):
        assert expected in text


def test_debug_shows_the_traceback(video_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli("--source", video_path, "--headless", "--model", "nope.keras", "--debug")
    errors = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "Traceback (most recent call last)" in errors
    assert errors.strip().splitlines()[-1].startswith("mnstream: error: model nope.keras")


def test_an_unexpected_error_of_many_lines_ends_the_command_with_its_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given an error nobody foresaw whose message runs to several lines, as Ray's and native libraries' do
    error = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: ProxyActor\n")

    # when a command ends with it
    code = report_error(error, debug=False)

    # then one line names it, and the exit code is a failure's
    assert capsys.readouterr().err.splitlines() == [
        "mnstream: error: RuntimeError: The actor died unexpectedly before finishing this task."
    ]
    assert code == EXIT_FAILURE


def test_warnings_go_to_standard_error_as_plain_lines_and_logging_is_left_as_found(
    tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # given a folder with a photo and a file that only looks like one
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "owl.jpg").write_bytes((assets / "images/owl.jpg").read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    model = assets / "models/tflite/mobilenet_v1_0.25_128_quant.tflite"

    # when
    code = main(["--source", str(folder), "--model", str(model), "--top-k", "1"])
    captured = capsys.readouterr()

    # then the results alone are on standard output, the warning is one unpadded line on standard error
    assert code == EXIT_OK
    assert [line.split(":")[0] for line in captured.out.splitlines()] == [str(folder / "owl.jpg")]
    assert captured.err.splitlines() == [
        f"mnstream: warning: skipping {folder / 'broken.png'}: it is not an image OpenCV can decode"
    ]

    # and the logging of this process is as it was: a later warning reaches pytest's own capture
    with caplog.at_level(logging.WARNING, logger="stream"):
        logging.getLogger("stream.sources").warning("after the run")
    assert "after the run" in caplog.text


def test_a_variable_frame_rate_video_keeps_its_frames_times(tmp_path: Path) -> None:
    # given a phone-style recording: 30 frames at 10 fps, then 20 at 5 fps
    times_s = [index / 10 for index in range(30)] + [3.0 + index / 5 for index in range(20)]
    source = write_timed_video(tmp_path / "vfr.mp4", [index_frame(i) for i in range(50)], times_s)
    output, jsonl = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"
    model = require_asset("models/tflite/mobilenet_v1_0.25_128_quant.tflite")

    # when
    code, printed = run_cli(
        "--source", source, "--model", model, "--output", output, "--jsonl", jsonl, "--headless", "--top-k", 1
    )

    # then each line has its frame's own time (frame 38 is at 4.6 s, not at 38 / the average rate)
    assert code == EXIT_OK, printed
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(50))
    assert [line["source_s"] for line in lines] == pytest.approx(times_s)
    # and the annotated copy plays each frame when the source does
    frames, output_times_s, codec = decode_until_damaged(output)
    assert codec == "h264"
    assert [read_index(frame) for frame in frames] == list(range(50))
    assert output_times_s == pytest.approx(times_s, abs=1e-4)


def test_codec_crf_and_preset_choose_how_the_output_is_encoded(tmp_path: Path) -> None:
    # given
    source = write_video(tmp_path / "clip.avi", [index_frame(index) for index in range(20)])
    output = tmp_path / "annotated.mkv"
    model = require_asset("models/tflite/mobilenet_v1_0.25_128_quant.tflite")

    # when
    code, printed = run_cli(
        "--source", source, "--model", model, "--output", output, "--headless", "--codec", "vp9", "--crf", "40"
    )

    # then
    assert code == EXIT_OK, printed
    frames, _, codec = decode_until_damaged(output)
    assert codec == "vp9"
    assert [read_index(frame) for frame in frames] == list(range(20))


def test_a_codec_the_extension_cannot_hold_is_refused_before_anything_opens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a source that does not exist: opening it would be the first thing a run does
    output = tmp_path / "annotated.webm"

    # when
    code, _ = run_cli("--source", tmp_path / "nope.mp4", "--output", output, "--codec", "h264", "--headless")

    # then
    assert code == EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == ["mnstream: error: --codec: a .webm file holds vp9 or av1, not h264"]
    assert not output.exists()


def test_an_option_the_run_does_not_use_is_warned_about(assets: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # when still images, which are printed rather than logged, are given a label log period
    code, _ = run_cli("--source", assets / "images" / "parrot.jpg", "--log-interval", 5)

    # then the run goes ahead and says the option does nothing here
    assert code == EXIT_OK
    assert "mnstream: warning: --log-interval sets how often --headless runs log" in capsys.readouterr().err
