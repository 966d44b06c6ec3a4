"""`mnstream evaluate` on real photos: the report of a trained model's float and int8 files and of an ImageNet
MobileNet, and bad folders, images and outputs.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import require_asset, run_cli, run_mnstream
from PIL import Image

from stream.commands import EXIT_OK, EXIT_USAGE
from stream.datasets import split_data

pytestmark = pytest.mark.usefixtures("keras_home")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared ants and bees as train/ and val/ folders of links, split with another seed than training's."""
    source = require_asset("datasets/hymenoptera")
    root = tmp_path_factory.mktemp("hymenoptera")
    split = split_data(source, val_fraction=0.25, seed=7)
    for folder, samples in (("train", split.train), ("val", split.val)):
        for sample in samples:
            link = root / folder / split.classes[sample.label] / sample.path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(sample.path)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> Path:
    """A model trained on train/ without augmentation (the fastest training), held out on val/, into a folder whose
    name rich would read as markup.
    """
    output = tmp_path_factory.mktemp("trained") / "[cyan]model"
    with contextlib.redirect_stderr(io.StringIO()):
        code, printed = run_cli("train", photos, "--output", output, "--no-augment", "--epochs", 10)
    assert code == EXIT_OK, printed
    assert f"wrote {output} in " in printed and f"--model {output / 'model_int8.tflite'}" in printed
    return output


def evaluate(*args: object) -> tuple[int, str, str]:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code, printed = run_cli("evaluate", *args)
    return code, printed, errors.getvalue()


@pytest.mark.parametrize(("model", "tag"), [("model_int8.tflite", "int8"), ("model.keras", "float")])
def test_evaluate_reports_what_training_measured_on_the_same_images(
    trained: Path, photos: Path, tmp_path: Path, model: str, tag: str
) -> None:
    # given the training's own report, on val/
    training = next(
        entry for entry in json.loads((trained / "report.json").read_text())["models"] if entry["tag"] == tag
    )

    # when the model file is evaluated on val/ again, on its own
    options = ("--labels", trained / "labels.txt", "--runtime", "tensorflow") if tag == "float" else ()
    code, printed, errors = evaluate(photos / "val", "--model", trained / model, *options, "--output", tmp_path / "r")

    # then the same images, the same answers
    assert code == EXIT_OK, printed + errors
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    (evaluated,) = report["models"]
    assert evaluated["images"] == training["images"] == len(list((photos / "val").rglob("*.jpg")))
    assert evaluated["accuracy"] == training["accuracy"] >= 0.9
    assert evaluated["confusion"] == training["confusion"]
    # Names are relative to the data folder given: val/ here, its parent in training.
    assert [f"val/{miss['image']}" for miss in evaluated["misclassified"]] == [
        miss["image"] for miss in training["misclassified"]
    ]
    assert f"{evaluated['accuracy']:.1%}" in printed
    assert cv2.imread(str(tmp_path / "r" / f"confusion-{Path(model).stem}.png")) is not None


def test_a_train_and_val_folder_is_evaluated_on_val(trained: Path, photos: Path, tmp_path: Path) -> None:
    code, printed, _ = evaluate(photos, "--model", trained / "model_int8.tflite", "--output", tmp_path / "r")
    assert code == EXIT_OK, printed
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["data"] == str(photos / "val")
    assert report["models"][0]["images"] == len(list((photos / "val").rglob("*.jpg")))


def test_names_that_look_like_console_markup_are_printed_as_they_are(
    trained: Path, photos: Path, tmp_path: Path
) -> None:
    # given the model and the report folder under names rich would read as markup
    model = tmp_path / "[red]ants.tflite"
    model.symlink_to(trained / "model_int8.tflite")
    output = tmp_path / "[bold]report"

    # when
    code, printed, _ = evaluate(photos / "val", "--model", model, "--output", output)

    # then
    assert code == EXIT_OK, printed
    assert "[red]ants.tflite ([red]ants)" in printed
    assert f"wrote {output / 'report.json'}" in printed


def test_an_imagenet_mobilenet_on_folders_named_after_its_classes(photos: Path, tmp_path: Path) -> None:
    # given the held-out photos in folders named after ImageNet's classes "ant" and "bee"
    data = tmp_path / "imagenet_names"
    for folder, name in (("ants", "ant"), ("bees", "bee")):
        (data / name).mkdir(parents=True)
        for path in sorted((photos / "val" / folder).iterdir())[:12]:
            (data / name / path.name).symlink_to(path.resolve())

    # when
    code, printed, _ = evaluate(data, "--model", "mobilenet_v2", "--runtime", "tensorflow", "--output", tmp_path / "r")

    # then most are right, and what else it saw joins the confusion matrix as columns of their own
    assert code == EXIT_OK, printed
    (model,) = json.loads((tmp_path / "r" / "report.json").read_text())["models"]
    labels, matrix = model["confusion"]["labels"], np.array(model["confusion"]["matrix"])
    assert labels[:2] == ["ant", "bee"] and matrix.sum() == 24
    assert model["per_class"]["bee"]["recall"] >= 0.5 and model["accuracy"] >= 0.5
    assert len(model["misclassified"]) == 24 - np.trace(matrix)
    assert all(miss["predicted"] in labels for miss in model["misclassified"])


def test_odd_and_broken_images_are_evaluated_or_skipped_with_one_warning(trained: Path, tmp_path: Path) -> None:
    # given a folder of odd images a user may have: gray, CMYK, alpha, huge; and two that are not images
    data = tmp_path / "odd"
    (data / "ants").mkdir(parents=True)
    (data / "bees").mkdir()
    cv2.imwrite(str(data / "ants" / "gray.png"), np.full((120, 90), 200, np.uint8))
    Image.new("CMYK", (64, 48), (0, 40, 255, 0)).save(data / "bees" / "cmyk.jpg")
    cv2.imwrite(
        str(data / "bees" / "alpha.png"), np.dstack([np.full((40, 30, 3), 90, np.uint8), np.zeros((40, 30), np.uint8)])
    )
    cv2.imwrite(str(data / "ants" / "huge.jpg"), np.full((6000, 9000, 3), 60, np.uint8))
    (data / "ants" / "notes.txt").write_text("not a photo")
    (data / "bees" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")

    # when
    code, printed, errors = evaluate(data, "--model", trained / "model_int8.tflite", "--output", tmp_path / "r")

    # then the four images are evaluated; the two others are named in one warning, the huge one in another
    assert code == EXIT_OK, printed + errors
    assert json.loads((tmp_path / "r" / "report.json").read_text())["models"][0]["images"] == 4
    warnings = errors.splitlines()
    assert len(warnings) == 2, errors
    assert warnings[0].startswith("mnstream: warning: skipped 2 files") and warnings[0].endswith(
        "images: ants/notes.txt, bees/broken.jpg"
    )
    assert "1 image over 50 megapixels" in warnings[1] and "ants/huge.jpg" in warnings[1]


def test_folders_the_model_has_no_class_for_are_refused(trained: Path, photos: Path, tmp_path: Path) -> None:
    data = tmp_path / "wasps"
    (data / "wasps").mkdir(parents=True)
    (data / "bees").mkdir()
    for folder in ("wasps", "bees"):
        cv2.imwrite(str(data / folder / "0.jpg"), np.zeros((32, 32, 3), np.uint8))
    result = run_mnstream("evaluate", data, "--model", trained / "model_int8.tflite", "--output", tmp_path / "r")
    assert result.returncode == EXIT_USAGE
    assert result.stderr == (
        "mnstream: error: model_int8.tflite has no class wasps (its classes: ants, bees); "
        f"name the folders in {data} after the model's labels\n"
    )
    assert not (tmp_path / "r").exists()


def test_an_existing_report_is_refused_without_overwrite(trained: Path, photos: Path, tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.json").write_text("{}")
    result = run_mnstream("evaluate", photos, "--model", trained / "model_int8.tflite", "--output", tmp_path / "r")
    assert result.returncode == EXIT_USAGE
    assert "report.json exists; add --overwrite to replace it" in result.stderr
    assert (tmp_path / "r" / "report.json").read_text() == "{}"
    assert sorted(path.name for path in (tmp_path / "r").iterdir()) == ["report.json"]
