"""`mnstream export` on real MobileNets and real photos: int8 and float16 models that LiteRT runs, labels inside."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import classify, mobilenet_features, top1
from rich.console import Console

from stream.commands import EXIT_OK
from stream.config import ModelConfig
from stream.engines import Engine, create_engine
from stream.export import main
from stream.labels import IMAGENET_CLASSES, imagenet_classes, read_metadata_labels
from stream.sources import IMAGE_SUFFIXES
from stream.types import UsageError

pytestmark = pytest.mark.usefixtures("keras_home")


def run_export(*args: str | Path) -> tuple[int, str]:
    """Runs `mnstream export` in this process; returns the exit code and what it printed on its console."""
    console = Console(file=io.StringIO(), width=200)
    code = main([str(arg) for arg in args], console=console)
    return code, console.file.getvalue()


@pytest.fixture(scope="module")
def keras_v2() -> Engine:
    return create_engine(ModelConfig(runtime="tensorflow"))


@pytest.fixture(scope="module")
def int8_v2(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> tuple[Path, str]:
    """MobileNetV2 1.0/224 with the shared ImageNet weights, int8, calibrated on the shared photos."""
    output = tmp_path_factory.mktemp("int8") / "mobilenet_v2_int8.tflite"
    code, printed = run_export(
        "--model", "mobilenet_v2", "--int8", "--calibration", assets / "images", "--output", output
    )
    assert code == EXIT_OK, printed
    return output, printed


def test_int8_export_reports_each_stage_and_the_file(int8_v2: tuple[Path, str], assets: Path) -> None:
    output, printed = int8_v2
    photos = len([path for path in (assets / "images").iterdir() if path.suffix.lower() in IMAGE_SUFFIXES])
    assert "building mobilenet_v2" in printed
    assert re.search(rf"calibrating .* {photos}/{photos}", printed), printed
    assert "converting to int8" in printed
    size_mb = output.stat().st_size / 1e6
    assert re.search(rf"wrote {re.escape(str(output))} \({size_mb:.1f} MB, int8, 1000 labels\) in [\d.]+ s", printed)
    assert "Saved artifact" not in printed


def test_int8_export_agrees_with_the_float_model_on_every_reliable_photo(
    int8_v2: tuple[Path, str], keras_v2: Engine, reliable_photos: list[tuple[Path, str]]
) -> None:
    # given the int8 export, which carries its labels, and the float Keras model it came from
    output, _ = int8_v2
    labels = read_metadata_labels(output)
    assert labels is not None and len(labels) == IMAGENET_CLASSES
    engine = create_engine(ModelConfig(model=str(output)))
    photos = [photo for photo, _ in reliable_photos]

    # when
    scores = classify(engine, photos)
    float_scores = classify(keras_v2, photos)

    # then LiteRT fed it [-1, 1] as it expects: same top-1 as the float model, the expected one, as probabilities
    assert engine.classes == imagenet_classes()
    assert top1(engine, scores) == top1(keras_v2, float_scores) == [name for _, name in reliable_photos]
    # An int8 softmax rounds each of the 1000 probabilities to a step of 1/256, so their sum drifts below 1.
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=0.1)


def test_float16_export_recognises_every_reliable_photo(
    tmp_path: Path, keras_v2: Engine, reliable_photos: list[tuple[Path, str]]
) -> None:
    # given
    output = tmp_path / "mobilenet_v2_f16.tflite"
    code, printed = run_export("--model", "mobilenet_v2", "--float16", "--output", output)
    assert code == EXIT_OK, printed
    engine = create_engine(ModelConfig(model=str(output)))
    photos = [photo for photo, _ in reliable_photos]

    # when
    scores = classify(engine, photos)

    # then float16 weights stay within rounding of the float model
    assert "float16, 1000 labels" in printed
    assert top1(engine, scores) == [name for _, name in reliable_photos]
    np.testing.assert_allclose(scores, classify(keras_v2, photos), atol=0.01)


def test_users_model_exports_with_its_labels(tmp_path: Path, assets: Path) -> None:
    # given a user's .keras classifier: MobileNet 0.25/128 features under a new three-class head, and its labels
    import keras

    inputs, pooled = mobilenet_features()
    scores = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(pooled))
    model_path = tmp_path / "three_classes.keras"
    keras.Model(inputs, scores).save(model_path)
    labels_path = tmp_path / "labels.txt"
    labels_path.write_text("parrot\nhot dog\ncrisps\n")
    output = tmp_path / "three_classes.tflite"

    # when
    code, printed = run_export(
        "--model", model_path, "--labels", labels_path,
        "--int8", "--calibration", assets / "images" / "*.jpg", "--output", output,
    )  # fmt: skip

    # then the labels travel inside the model, and LiteRT runs it
    assert code == EXIT_OK, printed
    assert "int8, 3 labels" in printed
    engine = create_engine(ModelConfig(model=str(output)))
    assert engine.classes.names == ("parrot", "hot dog", "crisps") == read_metadata_labels(output).names
    assert engine.input_size == (128, 128)
    probabilities = classify(engine, [assets / "images" / "parrot.jpg", assets / "images" / "owl.jpg"])
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.05)


def test_model_that_scales_pixels_itself_takes_mobilenet_input_once_exported(
    tmp_path: Path, reliable_photos: list[tuple[Path, str]]
) -> None:
    # given a model that takes 0..255 pixels and scales them itself, as MobileNetV3 does (no V3 ImageNet weights
    # are available offline, so MobileNet 0.25/128 behind its own preprocessing stands in)
    import keras

    inputs = keras.Input((128, 128, 3))
    imagenet = keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.25)
    model_path = tmp_path / "raw_pixels.keras"
    keras.Model(inputs, imagenet(keras.applications.mobilenet.preprocess_input(inputs))).save(model_path)
    output = tmp_path / "raw_pixels.tflite"
    photos = [photo for photo, _ in reliable_photos]

    # when it is exported, then run by LiteRT as any .tflite (pixels to [-1, 1])
    code, printed = run_export("--model", model_path, "--preprocess", "raw", "--float16", "--output", output)
    assert code == EXIT_OK, printed
    scores = classify(create_engine(ModelConfig(model=str(output))), photos)

    # then it scores like the Keras model fed raw pixels
    keras_engine = create_engine(ModelConfig(model=str(model_path), preprocess="raw", runtime="tensorflow"))
    np.testing.assert_allclose(scores, classify(keras_engine, photos), atol=0.01)


def test_mobilenet_v3_exports_and_runs(tmp_path: Path, assets: Path) -> None:
    # No V3 ImageNet weights are available offline: this checks the family (hard-swish, squeeze-and-excite, its
    # own rescaling behind ours) quantizes and runs, not recognition.
    output = tmp_path / "v3_small.tflite"
    code, printed = run_export(
        "--model", "mobilenet_v3_small", "--weights", "none", "--input-size", "160",
        "--int8", "--calibration", assets / "images", "--output", output,
    )  # fmt: skip
    assert code == EXIT_OK, printed
    engine = create_engine(ModelConfig(model=str(output)))
    scores = classify(engine, [assets / "images" / "parrot.jpg"])
    # Random weights score every class about 0.001, which int8's output step of 1/256 rounds to 0.
    assert engine.input_size == (160, 160) and scores.shape == (1, 1000)
    assert np.all((scores >= 0) & (scores <= 1))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--int8", "--output", "{out}"], r"--int8 needs --calibration FOLDER\|GLOB"),
        (["--int8", "--float16", "--calibration", "{photos}", "--output", "{out}"], r"--int8 or --float16, not both"),
        (["--output", "{out}"], r"choose a quantization: --int8 --calibration FOLDER\|GLOB, or --float16"),
        (["--float16", "--calibration", "{photos}", "--output", "{out}"], r"--calibration is for --int8"),
        (
            ["--int8", "--calibration", "{empty}", "--output", "{out}"],
            r"no calibration images in \S+; pass --calibration",
        ),
        (["--int8", "--calibration", "{tmp}/*.png", "--output", "{out}"], r"no calibration images in \S+\*\.png"),
        (["--float16", "--output", "{tmp}/model.tfl"], r"--output \S+model\.tfl: use one of the extensions \.tflite"),
        (["--float16", "--output", "{tmp}/missing/m.tflite"], r"--output \S+: folder \S+missing does not exist"),
        (["--float16", "--output", "{tmp}/folder.tflite"], r"--output \S+folder\.tflite is a folder"),
        (["--float16", "--output", "{tmp}/done.tflite"], r"done\.tflite exists; add --overwrite to replace it"),
        (["--int8", "--calibration", "{tmp}/gone", "--output", "{out}"], r"--calibration \S+gone does not exist"),
        (["--model", "{tmp}/missing.keras", "--float16", "--output", "{out}"], r"missing\.keras is neither a file nor"),
    ],
    ids=[
        "int8 without calibration",
        "both quantizations",
        "no quantization",
        "float16 with calibration",
        "empty calibration folder",
        "glob matching nothing",
        "not .tflite",
        "missing output folder",
        "output is a folder",
        "existing output",
        "missing calibration folder",
        "missing model file",
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # given
    (tmp_path / "empty").mkdir()
    (tmp_path / "folder.tflite").mkdir()
    (tmp_path / "done.tflite").write_bytes(b"an earlier export")
    paths = {
        "out": tmp_path / "model.tflite",
        "photos": assets / "images",
        "empty": tmp_path / "empty",
        "tmp": tmp_path,
    }
    filled = [arg.format(**paths) for arg in args]
    if "--model" not in filled:
        filled = ["--model", "mobilenet_v2", *filled]

    # when
    code, _ = run_export(*filled)

    # then
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == UsageError.exit_code
    assert len(errors) == 1 and errors[0].startswith("mnstream: error: "), errors
    assert re.search(message, errors[0]), errors[0]
    assert not paths["out"].exists()


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_export(
        "--model", tmp_path / "missing.keras", "--float16", "--output", tmp_path / "m.tflite", "--debug"
    )
    errors = capsys.readouterr().err
    assert code == UsageError.exit_code
    assert "Traceback (most recent call last)" in errors
    assert errors.strip().splitlines()[-1].startswith("mnstream: error: model ")


def test_help_explains_the_quantizations_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    text = capsys.readouterr().out
    assert exited.value.code == 0
    for expected in ("mnstream export", "--int8", "--calibration", "--float16", "--labels", "[-1, 1]", "Exit codes"):
        assert expected in text
