"""`mnstream train` on real ant and bee photos: held-out accuracy of the float and int8 models, the report, the
model running live with its new labels, and bad data refused or warned about in one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import classify, require_asset, run_cli, run_mnstream, start_mnstream, top1, wait_for
from PIL import Image

from stream.commands import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from stream.config import ModelConfig
from stream.datasets import Sample, decode, split_data
from stream.engines import create_engine

pytestmark = pytest.mark.usefixtures("keras_home")

SEED = 0
"""The split the fixture trains on, and that the tests rebuild to find the held-out images."""


@pytest.fixture(scope="module")
def hymenoptera() -> Path:
    return require_asset("datasets/hymenoptera")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path) -> tuple[Path, str, str]:
    """The default training on the shared ants and bees, few epochs: the model's folder, the console, stderr."""
    output = tmp_path_factory.mktemp("trained") / "ants_bees"
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code, printed = run_cli("train", hymenoptera, "--output", output, "--epochs", 8, "--seed", SEED)
    assert code == EXIT_OK, printed + errors.getvalue()
    return output, printed, errors.getvalue()


def held_out(data: Path) -> list[Sample]:
    split = split_data(data, val_fraction=0.2, seed=SEED)
    return [sample for sample in split.val if sample.path.suffix != ".gif"]


def test_train_writes_the_model_its_labels_the_int8_export_and_the_report(trained: tuple[Path, str, str]) -> None:
    output, printed, _ = trained
    report = json.loads((output / "report.json").read_text())
    missed = [model["tag"] for model in report["models"] if model["misclassified"]]
    assert sorted(path.name for path in output.iterdir()) == sorted(
        [
            *("model.keras", "labels.txt", "model_int8.tflite", "report.json", "report.md"),
            *("confusion-float.png", "confusion-int8.png"),
            *(f"misclassified-{tag}.png" for tag in missed),
        ]
    )
    assert (output / "labels.txt").read_text() == "ants\nbees\n"
    assert "calibrating" in printed and "converting to int8" in printed and "held-out accuracy" in printed
    assert f"run it live: mnstream --camera 0 --model {output / 'model_int8.tflite'}" in printed


def test_the_real_undecodable_file_is_skipped_with_one_warning(trained: tuple[Path, str, str]) -> None:
    _, _, errors = trained
    warnings = [line for line in errors.splitlines() if line.startswith("mnstream: warning:")]
    assert len(warnings) == 1, errors
    assert "skipped 1 file" in warnings[0] and "ants/imageNotFound.gif" in warnings[0]
    assert "Traceback" not in errors


# A model file that warns as it loads (Keras does for an optimizer saved inside it) would warn every user.
@pytest.mark.filterwarnings("error::UserWarning")
def test_float_and_int8_models_recognise_held_out_photos(trained: tuple[Path, str, str], hymenoptera: Path) -> None:
    # given the held-out images of the fixture's seeded split, which training never learned from
    output, _, _ = trained
    samples = held_out(hymenoptera)
    truth = [("ants", "bees")[sample.label] for sample in samples]
    report = json.loads((output / "report.json").read_text())

    for model, tag in ((output / "model.keras", "float"), (output / "model_int8.tflite", "int8")):
        # when each model, loaded as `mnstream --model` loads it, classifies them
        labels = str(output / "labels.txt") if tag == "float" else None
        engine = create_engine(
            ModelConfig(model=str(model), labels=labels, runtime="tensorflow" if labels else "litert")
        )
        predicted = top1(engine, classify(engine, [sample.path for sample in samples]))
        accuracy = np.mean([guess == true for guess, true in zip(predicted, truth, strict=True)])

        # then they get nearly all right, and the report says what they got
        assert accuracy >= 0.9, (tag, accuracy)
        reported = next(entry for entry in report["models"] if entry["tag"] == tag)
        assert reported["images"] == len(samples)
        assert reported["accuracy"] == pytest.approx(accuracy, abs=1.5 / len(samples))
    accuracies = [entry["accuracy"] for entry in report["models"]]
    assert abs(accuracies[0] - accuracies[1]) <= 2.5 / len(samples), "int8 strays from float by more than 2 images"


def test_the_report_counts_add_up(trained: tuple[Path, str, str], hymenoptera: Path) -> None:
    output, _, _ = trained
    report = json.loads((output / "report.json").read_text())
    assert report["classes"] == ["ants", "bees"]
    assert report["head"] == "ImageNet's classifier for ant, bee, its biases trained"
    assert report["held_out_images"] == len(held_out(hymenoptera))
    assert report["training_images"] + report["held_out_images"] == 244
    assert set(report["timings_s"]) >= {"decode, augment and run the frozen base", "train", "export int8", "total"}
    markdown = (output / "report.md").read_text()
    for model in report["models"]:
        matrix = np.array(model["confusion"]["matrix"])
        assert model["confusion"]["labels"] == ["ants", "bees"]
        assert matrix.sum() == model["images"]
        assert model["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
        assert len(model["misclassified"]) == matrix.sum() - np.trace(matrix)
        for index, name in enumerate(["ants", "bees"]):
            assert model["per_class"][name]["recall"] == pytest.approx(matrix[index, index] / matrix[index].sum())
            assert model["per_class"][name]["precision"] == pytest.approx(matrix[index, index] / matrix[:, index].sum())
        for miss in model["misclassified"]:
            assert (hymenoptera / miss["image"]).is_file() and miss["true"] != miss["predicted"]
            assert miss["image"] in markdown
        assert f"accuracy {model['accuracy']:.1%}" in markdown
        confusion = cv2.imread(str(output / f"confusion-{model['tag']}.png"))
        assert confusion is not None and confusion.shape[0] > 100
        if model["misclassified"]:
            sheet = cv2.imread(str(output / f"misclassified-{model['tag']}.png"))
            assert sheet is not None and sheet.shape[1] > 500


def test_the_int8_model_runs_in_mnstream_with_the_new_labels(trained: tuple[Path, str, str], hymenoptera: Path) -> None:
    # given a held-out bee photo that the int8 model gets right, by the report
    output, _, _ = trained
    report = json.loads((output / "report.json").read_text())
    missed = {miss["image"] for miss in report["models"][1]["misclassified"]}
    bee = next(
        s.path for s in held_out(hymenoptera) if s.label == 1 and str(s.path.relative_to(hymenoptera)) not in missed
    )

    # when the live pipeline runs the model on it
    code, printed = run_cli("--source", bee, "--model", output / "model_int8.tflite")

    # then it names the new class, not an ImageNet one
    assert code == EXIT_OK, printed
    assert "bees" in printed and "ants" in printed  # top-k holds both classes, the bee first
    assert printed.index("bees") < printed.index("ants")
    assert "n0" not in printed  # no WordNet id: the labels came from inside the model


def test_an_output_that_holds_a_model_is_refused_and_left_alone(
    trained: tuple[Path, str, str], hymenoptera: Path
) -> None:
    output, _, _ = trained
    before = {path.name: path.stat().st_mtime_ns for path in output.iterdir()}
    result = run_mnstream("train", hymenoptera, "--output", output)
    assert result.returncode == EXIT_USAGE
    assert result.stderr == (
        f"mnstream: error: {output / 'model.keras'} exists; add --overwrite to replace it, or choose another --output\n"
    )
    assert {path.name: path.stat().st_mtime_ns for path in output.iterdir()} == before


def photo(path: Path, color: tuple[int, int, int] = (30, 120, 200), *, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), color, np.uint8))
    return path


def empty(root: Path) -> None:
    root.mkdir()


def one_class(root: Path) -> None:
    for index in range(3):
        photo(root / "ants" / f"{index}.jpg")


def one_image(root: Path) -> None:
    for index in range(3):
        photo(root / "ants" / f"{index}.jpg")
    photo(root / "bees" / "0.jpg")


def only_files(root: Path) -> None:
    photo(root / "ant.jpg")
    photo(root / "bee.jpg")


def val_class_unknown(root: Path) -> None:
    for split, classes in (("train", ("ants", "bees")), ("val", ("ants", "wasps"))):
        for name in classes:
            photo(root / split / name / "0.jpg")


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (empty, (), "holds no class folders; put each class's images in a folder named after the class inside it"),
        (only_files, (), "holds no class folders"),
        (one_class, (), "has one class folder (ants); a classifier needs two or more, one folder each"),
        (one_image, (), "class bees has 1 image"),
        (val_class_unknown, (), "has classes that"),
        (one_class, ("--val-split", "1.5"), "--val-split 1.5 must be between 0 and 1"),
        (one_image, ("--epochs", "0"), "--epochs 0 must be at least 1"),
        (one_image, ("--model", "mobilenet_v2_int8.tflite"), "train builds on a named MobileNet"),
        (one_image, ("--labels", "labels.txt"), "--labels is for running a model file"),
    ],
)
def test_bad_data_is_refused_in_one_line_and_nothing_is_written(
    tmp_path: Path, make: object, extra: tuple[str, ...], message: str
) -> None:
    # given
    data = tmp_path / "photos"
    make(data)
    output = tmp_path / "model"

    # when
    result = run_mnstream("train", data, "--output", output, *extra)

    # then
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.startswith("mnstream: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not output.exists()


def test_a_training_interrupted_once_it_writes_leaves_no_half_model_behind(tmp_path: Path, hymenoptera: Path) -> None:
    # given a small copy of the ants and bees, and a training into a new folder
    data = tmp_path / "photos"
    for name in ("ants", "bees"):
        (data / name).mkdir(parents=True)
        for photo in sorted((hymenoptera / name).glob("*.jpg"))[:6]:
            (data / name / photo.name).symlink_to(photo)
    output = tmp_path / "model"
    training = start_mnstream("train", data, "--output", output, "--no-augment", "--epochs", 1)

    # when Ctrl-C comes after model.keras is written, while the int8 export runs
    wait_for(lambda: (output / "model.keras").exists(), training)
    training.send_signal(signal.SIGINT)
    _, errors = training.communicate(timeout=120)

    # then the folder it made is gone, so the same command runs again without --overwrite
    assert training.returncode == EXIT_INTERRUPTED, errors
    assert not output.exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_an_output_folder_inside_the_photos_is_refused_before_anything_is_written(
    tmp_path: Path, hymenoptera: Path, command: str
) -> None:
    # given a folder of class folders, and an output folder inside it that would become a class of its own
    data = tmp_path / "photos"
    for name in ("ants", "bees"):
        (data / name).mkdir(parents=True)
        for photo in sorted((hymenoptera / name).glob("*.jpg"))[:2]:
            (data / name / photo.name).symlink_to(photo)
    model = () if command == "train" else ("--model", require_asset("models/tflite/mobilenet_v2_1.0_224_quant.tflite"))

    # when
    result = run_mnstream(command, data, *model, "--output", data / "model")

    # then
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr == (
        f"mnstream: error: --output {data / 'model'} is inside {data}, where its pictures would be taken for a "
        "class's images; choose a folder outside it\n"
    )
    assert sorted(path.name for path in data.iterdir()) == ["ants", "bees"]


def test_a_missing_data_folder_is_refused(tmp_path: Path) -> None:
    result = run_mnstream("train", tmp_path / "nowhere", "--output", tmp_path / "model")
    assert result.returncode == EXIT_USAGE
    assert "nowhere does not exist; give a folder that holds one folder of images per class" in result.stderr


def test_odd_images_decode_as_the_pipeline_reads_them(tmp_path: Path) -> None:
    # given a grayscale PNG, a CMYK JPEG, a PNG with alpha, a 16-bit PNG, a huge JPEG, text and a broken JPEG
    red = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((40, 30), 200, np.uint8))
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    cv2.imwrite(
        str(tmp_path / "alpha.png"), np.dstack([np.full((40, 30, 3), red, np.uint8), np.full((40, 30), 90, np.uint8)])
    )
    cv2.imwrite(str(tmp_path / "sixteen.png"), np.full((40, 30, 3), 50_000, np.uint16))
    cv2.imwrite(str(tmp_path / "huge.jpg"), np.full((6000, 9000, 3), red, np.uint8))
    (tmp_path / "notes.jpg").write_text("not a photo")
    (tmp_path / "broken.jpg").write_bytes((tmp_path / "cmyk.jpg").read_bytes()[:100])
    names = ["gray.png", "cmyk.jpg", "alpha.png", "sixteen.png", "huge.jpg", "notes.jpg", "broken.jpg"]

    # when
    decoded = decode([Sample(tmp_path / name, 0) for name in names], (32, 32))

    # then every image is RGB model input; the two that are not images are set aside
    assert [sample.path.name for sample in decoded.samples] == names[:5]
    assert [path.name for path in decoded.undecodable] == ["notes.jpg", "broken.jpg"]
    assert [path.name for path in decoded.huge] == ["huge.jpg"]
    assert decoded.images.shape == (5, 32, 32, 3) and decoded.images.dtype == np.uint8
    gray, cmyk, alpha, sixteen, huge = (image[16, 16].tolist() for image in decoded.images)
    assert gray == [200, 200, 200]
    assert cmyk[0] > 200 and cmyk[1] < 40 and cmyk[2] < 40  # red, not CMYK's inverted channels
    assert alpha == [255, 0, 0] and huge[0] > 240
    assert sixteen == [195, 195, 195]


def test_fine_tuning_trains_the_top_layers_only_with_batch_norm_frozen(hymenoptera: Path) -> None:
    # given a few real ants and bees, through the frozen part of a base whose top 10 layers are to be fine-tuned
    from rich.console import Console
    from rich.progress import Progress

    from stream.training import TrainingOptions
    from stream.transfer import TransferModel

    split = split_data(hymenoptera, val_fraction=0.2, seed=SEED)
    samples = [*split.train[:8], *split.train[-8:]]
    transfer = TransferModel(ModelConfig(), split.classes, fine_tune=10, seed=SEED)
    images = decode(samples, transfer.input_size).images
    stored = transfer.stored(images, batch_size=8)
    labels = np.array([sample.label for sample in samples])
    before = {
        layer.name: [w.copy() for w in layer.get_weights()]
        for layer in transfer.frozen.layers + transfer.top.layers + transfer.head.layers
    }

    # when the head and then the top layers train
    with Progress(console=Console(file=io.StringIO())) as progress:
        fitted = transfer.fit((stored, labels), (stored, labels), TrainingOptions(epochs=2, batch_size=8), progress)

    # then the top's convolutions moved, batch norm and everything below the cut did not
    assert [each.epochs for each in fitted] == [2, 2] and transfer.fine_tuned_layers >= 10
    for layer in transfer.top.layers:
        moved = any(not np.array_equal(w, b) for w, b in zip(layer.get_weights(), before[layer.name], strict=True))
        assert moved == (bool(layer.get_weights()) and "BN" not in layer.name and "bn" not in layer.name), layer.name
    for layer in transfer.frozen.layers:
        assert all(np.array_equal(w, b) for w, b in zip(layer.get_weights(), before[layer.name], strict=True))
    # and the head, ImageNet's own ant and bee classifier, trained its biases only
    dense = transfer.head.layers[-1]
    kernel, bias = dense.get_weights()
    assert transfer.imagenet_head == ("ant", "bee")
    assert np.array_equal(kernel, before[dense.name][0]) and not np.array_equal(bias, before[dense.name][1])
    # and the whole classifier, on [-1, 1] pixels, gives what training measured on the stored outputs
    whole = transfer.classifier().predict(images.astype(np.float32) / 127.5 - 1, verbose=0).argmax(axis=1)
    assert whole.tolist() == transfer.predict_stored(stored).tolist()
