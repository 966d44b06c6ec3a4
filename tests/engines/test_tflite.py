"""The LiteRT engine on the coral int8 MobileNets and fresh TensorFlow exports, real photos, bad models, no TF."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_asset
from helpers import BLOCK_TENSORFLOW, classify, read_video, top1
from rich.console import Console

from stream.config import ModelConfig
from stream.engines import Engine, create_engine
from stream.labels import imagenet_classes, top_labels
from stream.recognizer import model_input
from stream.types import ModelError

V2_INT8 = "models/tflite/mobilenet_v2_1.0_224_quant.tflite"
V1_075_INT8 = "models/tflite/mobilenet_v1_0.75_192_quant.tflite"

# Runs first in a child interpreter: any attempt to import TensorFlow or Keras fails loudly.


def tflite_engine(relative: str, **options: object) -> Engine:
    return create_engine(ModelConfig(model=str(require_asset(relative)), **options))


def without_metadata(model: Path, folder: Path) -> Path:
    """A copy of a coral model without the zip of associated files that TFLite metadata appends to it."""
    with zipfile.ZipFile(model) as archive:
        end_of_model = min(info.header_offset for info in archive.infolist())
    bare = folder / f"bare_{model.name}"
    bare.write_bytes(model.read_bytes()[:end_of_model])
    return bare


def run_without_tensorflow(code: str) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh Python that cannot import TensorFlow; it prints which heavy modules got loaded."""
    epilogue = "\nprint('heavy modules:', sorted({'tensorflow', 'keras'} & set(sys.modules)))\n"
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TENSORFLOW + code + epilogue],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def v2_int8() -> Engine:
    return tflite_engine(V2_INT8)


def test_int8_v2_recognises_every_reliable_photo(v2_int8: Engine, reliable_photos: list[tuple[Path, str]]) -> None:
    # given the coral model, whose 1001 outputs start with `background`, named by its own metadata
    assert v2_int8.input_size == (224, 224)
    assert v2_int8.classes == imagenet_classes()

    # when the whole set goes through in one call
    scores = classify(v2_int8, [photo for photo, _ in reliable_photos])

    # then each top-1 is the expected class, and the dequantized scores are probabilities
    assert scores.shape == (len(reliable_photos), 1000)
    assert top1(v2_int8, scores) == [name for _, name in reliable_photos]
    assert scores.max(axis=1).min() >= 0.6
    assert np.all(scores >= 0) and np.all(scores.sum(axis=1) <= 1.0 + 1e-6)


@pytest.mark.parametrize("factor", [3, 5])
def test_frames_many_times_the_model_size_keep_every_top1(
    v2_int8: Engine, reliable_photos: list[tuple[Path, str]], factor: int
) -> None:
    # given each photo enlarged to odd sides several times the model's input: 4K-like frames, whose halvings
    # leave odd rows and columns behind
    photos = [cv2.imread(str(photo)) for photo, _ in reliable_photos]
    large = [cv2.resize(photo, (photo.shape[1] * factor + 1, photo.shape[0] * factor + 1)) for photo in photos]

    # when they are prepared as frames are and classified
    inputs = np.stack([model_input(image, v2_int8.input_size) for image in large])
    scores = v2_int8.infer(inputs)

    # then the model sees a picture as good as the photo itself: the same top-1 for every one
    assert inputs.shape == (len(photos), 224, 224, 3)
    assert top1(v2_int8, scores) == [name for _, name in reliable_photos]


def test_int8_v1_075_has_the_expected_class_in_its_top3(reliable_photos: list[tuple[Path, str]]) -> None:
    # given the smaller, weaker MobileNet v1 (0.75 width, 192 px)
    engine = tflite_engine(V1_075_INT8)
    assert engine.input_size == (192, 192)

    # when
    scores = classify(engine, [photo for photo, _ in reliable_photos])

    # then
    for (photo, name), row in zip(reliable_photos, scores, strict=True):
        top3 = [engine.classes.names[i] for i in np.argsort(row)[::-1][:3]]
        assert name in top3, f"{photo.name}: {top3}"


@pytest.mark.parametrize(("file", "keras_name"), [("grace_hopper.bmp", "military_uniform"), ("hot_dog.jpg", "hotdog")])
def test_labels_are_the_keras_engines_wordnet_ids_and_names(
    v2_int8: Engine, assets: Path, file: str, keras_name: str
) -> None:
    # given what the Keras engine reports for the expected class
    imagenet = imagenet_classes()
    keras_label = (imagenet.ids[imagenet.names.index(keras_name)], keras_name)

    # when
    scores = classify(v2_int8, [assets / "images" / file])[0]

    # then the int8 model's top-1 is the same (WordNet id, name) pair
    best = top_labels(scores, v2_int8.classes, top_k=1, threshold=0.0)[0]
    assert (best.class_id, best.name) == keras_label


@pytest.mark.parametrize(
    ("strip_metadata", "labels"),
    [
        (False, None),
        (True, None),
        (True, "models/tflite/imagenet_labels.txt"),
        (False, "models/tflite/imagenet_labels.txt"),
    ],
    ids=["metadata", "ImageNet fallback", "labels file", "labels file over metadata"],
)
def test_every_source_of_labels_gives_the_same_classes(
    tmp_path: Path, assets: Path, strip_metadata: bool, labels: str | None
) -> None:
    # given the coral model with or without its metadata, with or without the same labels as a file
    model = require_asset(V2_INT8)
    if strip_metadata:
        model = without_metadata(model, tmp_path)
    labels_path = str(require_asset(labels)) if labels else None

    # when
    engine = create_engine(ModelConfig(model=str(model), labels=labels_path))
    scores = classify(engine, [assets / "images" / "parrot.jpg"])[0]

    # then the background column and label are gone, and the ids are ImageNet's
    assert engine.classes == imagenet_classes()
    best = top_labels(scores, engine.classes, top_k=1, threshold=0.0)[0]
    assert (best.class_id, best.name) == ("n01818515", "macaw")


def test_fixed_batch_model_gives_the_same_results_batched_or_alone(
    v2_int8: Engine, reliable_photos: list[tuple[Path, str]]
) -> None:
    # given a model whose batch of 1 cannot be resized, and several different photos
    photos = [photo for photo, _ in reliable_photos[:5]]

    # when they go through in one call, then one by one
    together = classify(v2_int8, photos)
    alone = np.concatenate([classify(v2_int8, [photo]) for photo in photos])

    # then the per-frame loop gives each image exactly its own scores
    assert len(set(together.argmax(axis=1))) == len(photos)
    np.testing.assert_array_equal(together, alone)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, keras_home: Path, video_path: Path) -> dict[str, Path]:
    """MobileNetV2 1.0/224 from the shared Keras weights with a resizable batch: float32 in with logits out, as
    TensorFlow exports it (no metadata), and int8 in and out from `mnstream export`, calibrated on frames of the
    shared video; and two models that are not ImageNet image classifiers.
    """
    import keras
    import tensorflow as tf

    from stream import export

    folder = tmp_path_factory.mktemp("exported")
    # Calibration on frames of the video and the photos no test asserts: none of the photos under test.
    calibration = folder / "calibration"
    calibration.mkdir()
    capture = cv2.VideoCapture(str(video_path))
    images = [cv2.imread(str(require_asset(f"images/{file}"))) for file in ("pets.jpg", "kite_and_cold.jpg", "owl.jpg")]
    for index in itertools.count():
        ok, image = capture.read()
        if not ok:
            break
        if index % 100 == 0:
            images.append(image)
    capture.release()
    for number, image in enumerate(images):
        cv2.imwrite(str(calibration / f"{number:02d}.png"), image)  # lossless: the pixels OpenCV decoded
    paths = {"int8": folder / "int8.tflite"}
    args = ["--model", "mobilenet_v2", "--int8", "--calibration", str(calibration), "--output", str(paths["int8"])]
    assert export.main(args, console=Console(file=io.StringIO())) == export.EXIT_OK

    logits = tf.lite.TFLiteConverter.from_keras_model(keras.applications.MobileNetV2(classifier_activation=None))
    inputs = keras.Input((10,))
    tabular = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    pixels = keras.Input((32, 32, 3))
    five_classes = keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(pixels))
    unlabelled = tf.lite.TFLiteConverter.from_keras_model(keras.Model(pixels, five_classes))
    for name, converter in [("float_logits", logits), ("tabular", tabular), ("unlabelled", unlabelled)]:
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(converter.convert())
    return paths


@pytest.mark.parametrize("kind", ["float_logits", "int8"])
def test_exported_model_recognises_every_reliable_photo(
    exported: dict[str, Path], reliable_photos: list[tuple[Path, str]], kind: str
) -> None:
    # given a model without background class: float32 in with logits out and no metadata (so ImageNet names), or
    # int8 in and out with the Keras names in its metadata
    engine = create_engine(ModelConfig(model=str(exported[kind])))
    assert engine.classes == imagenet_classes()

    # when
    scores = classify(engine, [photo for photo, _ in reliable_photos])

    # then its inputs were scaled or quantized right, and its outputs became probabilities
    assert top1(engine, scores) == [name for _, name in reliable_photos]
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=0.05 if kind == "int8" else 1e-4)


def test_resizable_model_gives_the_same_results_batched_or_alone(
    exported: dict[str, Path], reliable_photos: list[tuple[Path, str]]
) -> None:
    # given a model whose batch resizes, and batches of changing sizes
    engine = create_engine(ModelConfig(model=str(exported["float_logits"])))
    photos = [photo for photo, _ in reliable_photos[:5]]

    # when
    together = classify(engine, photos)
    alone = np.concatenate([classify(engine, [photo]) for photo in photos])
    again = np.concatenate([classify(engine, photos[:2]), classify(engine, photos[2:])])

    # then
    np.testing.assert_allclose(together, alone, atol=1e-4)
    np.testing.assert_allclose(together, again, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("kind", ["float_logits", "int8"])
def test_every_thread_count_gives_every_frame_of_a_batch_its_own_scores(
    exported: dict[str, Path], reliable_photos: list[tuple[Path, str]], kind: str, threads: int
) -> None:
    # given an engine of as many one-thread interpreters as --threads asks, a machine of one core's included
    engine = create_engine(ModelConfig(model=str(exported[kind]), threads=threads))

    # when a batch of different photos goes through it
    scores = classify(engine, [photo for photo, _ in reliable_photos])

    # then each photo got a row of scores, its own
    assert top1(engine, scores) == [name for _, name in reliable_photos]


@pytest.mark.parametrize("kind", ["float_logits", "int8"])
def test_calls_from_two_threads_at_once_each_get_their_own_scores(
    exported: dict[str, Path], reliable_photos: list[tuple[Path, str]], kind: str
) -> None:
    # given an engine of two interpreters (a float model shares its frames out one by one, an int8 one in halves),
    # and two different batches with their scores from calls one after the other
    engine = create_engine(ModelConfig(model=str(exported[kind]), threads=2))
    photos = [photo for photo, _ in reliable_photos]
    batches = [photos[: len(photos) // 2], photos[len(photos) // 2 :]]
    expected = [classify(engine, batch) for batch in batches]

    # when two threads make their calls at the same time, over and over
    start = threading.Barrier(2)
    mismatches: list[int] = []

    def call(index: int) -> None:
        start.wait()
        for _ in range(10):
            if not np.array_equal(classify(engine, batches[index]), expected[index]):
                mismatches.append(index)

    callers = [threading.Thread(target=call, args=(index,)) for index in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    engine.close()

    # then no call got another's frames or an interpreter in use by the other
    assert mismatches == []


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("tabular", r"tabular\.tflite takes input \(None, 10\); an image classifier takes \(N, height, width, 3\)"),
        ("unlabelled", r"unlabelled\.tflite has 5 classes and no labels in its metadata; pass --labels FILE"),
    ],
)
def test_model_that_is_not_an_imagenet_image_classifier(exported: dict[str, Path], kind: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        create_engine(ModelConfig(model=str(exported[kind])))


@pytest.mark.parametrize(
    ("model", "labels", "message"),
    [
        ("junk.tflite", None, r"junk\.tflite is not a TensorFlow Lite model \(.+\); check --model$"),
        ("missing.tflite", None, r"model file \S*missing\.tflite does not exist; check --model$"),
        (V2_INT8, "cat\ndog\nbird\n", r"mobilenet_v2_1\.0_224_quant\.tflite has 1001 classes but its labels have 3"),
        (V2_INT8, "\n\n", r"labels file \S*labels\.txt holds no labels"),
    ],
    ids=["junk bytes", "missing file", "labels count", "empty labels"],
)
def test_unusable_model_or_labels(tmp_path: Path, model: str, labels: str | None, message: str) -> None:
    # given
    if model == "junk.tflite":
        (tmp_path / model).write_bytes(np.random.default_rng(0).bytes(4096))
    path = require_asset(model) if model.startswith("models/") else tmp_path / model
    labels_path = tmp_path / "labels.txt"
    if labels is not None:
        labels_path.write_text(labels)

    # when / then
    with pytest.raises(ModelError, match=message):
        create_engine(ModelConfig(model=str(path), labels=str(labels_path) if labels is not None else None))


def test_engine_runs_without_tensorflow(assets: Path) -> None:
    # given a Python where importing TensorFlow or Keras fails
    code = f"""
import cv2
from stream.config import ModelConfig
from stream.engines import create_engine
from stream.labels import top_labels
from stream.recognizer import model_input

engine = create_engine(ModelConfig(model={str(require_asset(V2_INT8))!r}))
scores = engine.infer(model_input(cv2.imread({str(assets / "images" / "parrot.jpg")!r}), engine.input_size)[None])
print("top-1:", top_labels(scores[0], engine.classes, top_k=1, threshold=0.0)[0].as_tuple()[:2])
"""

    # when
    result = run_without_tensorflow(code)

    # then
    assert result.returncode == 0, result.stderr
    assert "top-1: ('n01818515', 'macaw')" in result.stdout
    assert "heavy modules: []" in result.stdout


def test_cli_runs_a_tflite_model_on_the_real_video_without_tensorflow(tmp_path: Path, video_path: Path) -> None:
    # given a Python where importing TensorFlow or Keras fails
    output = tmp_path / "annotated.mp4"
    args = ["--source", str(video_path), "--model", str(require_asset(V2_INT8)), "--headless", "--output", str(output)]
    code = f"""
from stream.cli import main

print("exit code:", main({args!r}))
"""

    # when
    result = run_without_tensorflow(code)

    # then the run succeeded, never loaded TensorFlow, and wrote every frame
    assert result.returncode == 0, result.stderr
    assert "exit code: 0" in result.stdout, result.stdout + result.stderr
    assert "heavy modules: []" in result.stdout
    assert len(read_video(output)[0]) == len(read_video(video_path)[0]) == 1394
