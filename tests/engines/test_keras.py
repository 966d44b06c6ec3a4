"""The Keras engine (TensorFlow's kernels, `--runtime tensorflow`) on real ImageNet weights and real photos, a user's own fine-tuned model, and bad models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import classify, top1

from stream.config import ModelConfig
from stream.engines import Engine, create_engine
from stream.labels import imagenet_classes
from stream.types import MnstreamError, ModelError

pytestmark = pytest.mark.usefixtures("keras_home")


@pytest.fixture(scope="module")
def mobilenet_v2() -> Engine:
    return create_engine(
        ModelConfig(
            runtime="tensorflow",
        )
    )


def test_mobilenet_v2_recognises_every_reliable_photo(
    mobilenet_v2: Engine, reliable_photos: list[tuple[Path, str]]
) -> None:
    # when the whole set goes through in one batch
    scores = classify(mobilenet_v2, [photo for photo, _ in reliable_photos])

    # then each top-1 is the expected class, and the scores are probabilities
    assert top1(mobilenet_v2, scores) == [name for _, name in reliable_photos]
    assert scores.max(axis=1).min() >= 0.6
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-4)


def test_batch_results_equal_single_frame_results(
    mobilenet_v2: Engine, reliable_photos: list[tuple[Path, str]]
) -> None:
    photos = [photo for photo, _ in reliable_photos[:4]]
    together = classify(mobilenet_v2, photos)
    alone = np.concatenate([classify(mobilenet_v2, [photo]) for photo in photos])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_mobilenet_v1_075_192_loads_and_classifies(reliable_photos: list[tuple[Path, str]]) -> None:
    # given the smaller, weaker MobileNet v1 (0.75 width, 192 px)
    engine = create_engine(ModelConfig(runtime="tensorflow", model="mobilenet", alpha=0.75, input_size=192))
    assert engine.input_size == (192, 192)

    # when
    scores = classify(engine, [photo for photo, _ in reliable_photos])

    # then the expected class is within its top-3 for every photo
    for (photo, name), row in zip(reliable_photos, scores, strict=True):
        top3 = [engine.classes.names[i] for i in np.argsort(row)[::-1][:3]]
        assert name in top3, f"{photo.name}: {top3}"


def test_mobilenet_v3_builds_with_its_own_preprocessing() -> None:
    # No V3 ImageNet weights are available offline: this checks the model family is wired, not recognition.
    engine = create_engine(
        ModelConfig(runtime="tensorflow", model="mobilenet_v3_small", weights="none", input_size=160)
    )
    scores = engine.infer(np.zeros((3, 160, 160, 3), np.uint8))
    assert scores.shape == (3, 1000) and engine.classes == imagenet_classes()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-4)


def test_fine_tuned_model_with_its_own_labels(
    fine_tuned_model: tuple[Path, Path, dict[str, str]], assets: Path
) -> None:
    # given a saved .keras file whose own graph scales the pixels, so mnstream must pass them raw
    model_path, labels_path, photos = fine_tuned_model
    engine = create_engine(
        ModelConfig(runtime="tensorflow", model=str(model_path), labels=str(labels_path), preprocess="raw")
    )

    # when
    scores = classify(engine, [assets / "images" / file for file in photos])

    # then its logits became probabilities and its labels name the classes
    assert engine.input_size == (128, 128)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-4)
    assert top1(engine, scores) == list(photos.values())


def test_fine_tuned_model_without_labels_is_an_error(fine_tuned_model: tuple[Path, Path, dict[str, str]]) -> None:
    model_path, _, _ = fine_tuned_model
    with pytest.raises(ModelError, match=r"has 3 classes but its labels have 1000"):
        create_engine(ModelConfig(runtime="tensorflow", model=str(model_path)))


def test_model_whose_input_is_not_an_image(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((10,))
    path = tmp_path / "tabular.keras"
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs)).save(path)
    with pytest.raises(ModelError, match=r"takes input \(None, 10\); an image classifier takes"):
        create_engine(ModelConfig(runtime="tensorflow", model=str(path)))


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        (ModelConfig(model="mobilenet_v9"), ModelError, r"mobilenet_v9 is neither a file nor one of"),
        (ModelConfig(model="missing.keras"), ModelError, r"missing.keras is neither a file nor one of"),
        (ModelConfig(weights="missing.h5"), ModelError, r"weights file missing.h5 does not exist"),
        (ModelConfig(model="mobilenet", alpha=0.3), ModelError, r"mobilenet alpha=0.3"),
    ],
)
def test_bad_model_options(config: ModelConfig, error: type[MnstreamError], message: str) -> None:
    with pytest.raises(error, match=message):
        create_engine(config)


def test_file_that_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "notes.keras"
    path.write_text("not a model")
    with pytest.raises(ModelError, match=r"notes.keras cannot be loaded by Keras"):
        create_engine(ModelConfig(runtime="tensorflow", model=str(path)))
