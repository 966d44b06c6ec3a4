"""Keras models compiled to LiteRT: the same predictions as TensorFlow's kernels, cached, and robust to the cache."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, classify, top1

from stream import cache
from stream.config import ModelConfig
from stream.engines import create_engine
from stream.engines.keras import KerasEngine
from stream.engines.tflite import TFLiteEngine

pytestmark = pytest.mark.usefixtures("keras_home")

SMALL = ModelConfig(model="mobilenet", alpha=0.25, input_size=128)
"""The smallest MobileNet with ImageNet weights offline: the cheapest to convert, for the cache's tests."""


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    return folder


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(model="mobilenet", alpha=0.25, input_size=128),
        ModelConfig(model="mobilenet", alpha=0.5, input_size=160),
        ModelConfig(model="mobilenet_v2"),
    ],
    ids=["v1 0.25/128", "v1 0.5/160", "v2 1.0/224"],
)
def test_compiled_mobilenet_predicts_as_tensorflow_does(
    config: ModelConfig, reliable_photos: list[tuple[Path, str]]
) -> None:
    # given the same Keras MobileNet on TensorFlow's kernels and compiled to LiteRT
    photos = [photo for photo, _ in reliable_photos]
    tensorflow = create_engine(dataclasses.replace(config, runtime="tensorflow"))
    litert = create_engine(config)
    assert isinstance(tensorflow, KerasEngine) and isinstance(litert, TFLiteEngine)

    # when
    expected, scores = classify(tensorflow, photos), classify(litert, photos)

    # then
    _assert_same_predictions(scores, expected)
    assert litert.classes == tensorflow.classes and litert.input_size == tensorflow.input_size


def test_compiled_fine_tuned_model_predicts_as_tensorflow_does(
    fine_tuned_model: tuple[Path, Path, dict[str, str]], assets: Path
) -> None:
    # given a user's model that ends in logits and scales its own pixels, with its own labels
    model_path, labels_path, photos = fine_tuned_model
    config = ModelConfig(model=str(model_path), labels=str(labels_path), preprocess="raw")
    tensorflow = create_engine(dataclasses.replace(config, runtime="tensorflow"))
    litert = create_engine(config)
    assert isinstance(litert, TFLiteEngine)
    images = [assets / "images" / file for file in photos]

    # when
    expected, scores = classify(tensorflow, images), classify(litert, images)

    # then its labels travel with it, and it predicts what the TensorFlow model predicts
    _assert_same_predictions(scores, expected)
    assert litert.classes.names == tensorflow.classes.names == tuple(sorted(set(photos.values())))
    assert top1(litert, scores) == list(photos.values())


def _assert_same_predictions(scores: np.ndarray, expected: np.ndarray) -> None:
    """Identical top-1, and the top-5 scores within 1e-3."""
    np.testing.assert_array_equal(scores.argmax(axis=1), expected.argmax(axis=1))
    top5 = np.argsort(expected, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(
        np.take_along_axis(scores, top5, axis=1), np.take_along_axis(expected, top5, axis=1), atol=1e-3
    )


LOAD_AND_REPORT = """
import json, sys
from stream.config import ModelConfig
from stream.engines import create_engine
engine = create_engine(ModelConfig(model="mobilenet", alpha=0.25, input_size=128))
print(json.dumps({"engine": type(engine).__name__, "tensorflow": "tensorflow" in sys.modules}))
"""


TENSORFLOW_UNINSTALLED = """
import importlib.abc, sys
class Uninstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Uninstalled())
"""
"""Makes `import tensorflow` fail as it does where it is not installed (its package metadata stays readable)."""


def _load_in_subprocess(cache_folder: Path, *, tensorflow: bool = True) -> subprocess.Popen[str]:
    environment = {**os.environ, cache.CACHE_ENV: str(cache_folder)}
    code = LOAD_AND_REPORT if tensorflow else TENSORFLOW_UNINSTALLED + LOAD_AND_REPORT
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(process: subprocess.Popen[str]) -> dict[str, object]:
    output, errors = process.communicate(timeout=300)
    assert process.returncode == 0, errors
    return json.loads(output.strip().splitlines()[-1])


def test_second_run_loads_from_the_cache_without_tensorflow(empty_cache: Path) -> None:
    # when one process compiles the model, then another loads it
    first = _report(_load_in_subprocess(empty_cache))
    second = _report(_load_in_subprocess(empty_cache))

    # then the first needed TensorFlow to convert, the second did not import it at all
    assert first == {"engine": "TFLiteEngine", "tensorflow": True}
    assert second == {"engine": "TFLiteEngine", "tensorflow": False}
    assert len(list(empty_cache.glob("*.tflite"))) == 1


def test_cache_is_found_where_tensorflow_is_not_installed(empty_cache: Path) -> None:
    # given a model compiled by this TensorFlow, and a newer entry for the same model from another version of it,
    # damaged
    _report(_load_in_subprocess(empty_cache))
    (compiled,) = empty_cache.glob("*.tflite")
    damaged = compiled.with_name(compiled.name.rsplit("-", 1)[0] + "-0123456789abcdef0123.tflite")
    damaged.write_bytes(compiled.read_bytes()[:1000])

    # when a machine without TensorFlow runs it
    output, errors = _load_in_subprocess(empty_cache, tensorflow=False).communicate(timeout=300)

    # then it skips the damaged entry with one warning, and runs the one that loads, never needing TensorFlow
    assert json.loads(output) == {"engine": "TFLiteEngine", "tensorflow": False}, errors
    assert errors.count("does not load") == 1 and str(damaged) in errors, errors


def test_without_tensorflow_an_uncached_model_says_to_install_it(empty_cache: Path) -> None:
    # when a machine without TensorFlow runs a Keras model it has not compiled yet
    process = _load_in_subprocess(empty_cache, tensorflow=False)
    _, errors = process.communicate(timeout=300)

    # then
    assert process.returncode != 0
    assert "needs TensorFlow, which is not installed; install it with pip install 'mnstream[cpu]'" in errors


def test_concurrent_conversions_leave_a_valid_cache(empty_cache: Path, reliable_photos: list[tuple[Path, str]]) -> None:
    # when two runs start at once on an empty cache, both converting
    processes = [_load_in_subprocess(empty_cache) for _ in range(2)]
    reports = [_report(process) for process in processes]

    # then both ran on LiteRT, and the cache holds one whole model and no temporary file
    assert all(report["engine"] == "TFLiteEngine" for report in reports)
    assert [path.suffix for path in empty_cache.iterdir()] == [".tflite"]
    cached = create_engine(SMALL)
    assert isinstance(cached, TFLiteEngine)
    assert classify(cached, [reliable_photos[0][0]]).shape == (1, 1000)


def test_corrupt_cache_file_is_rebuilt_with_a_warning(
    empty_cache: Path, caplog: pytest.LogCaptureFixture, reliable_photos: list[tuple[Path, str]]
) -> None:
    # given a cached model damaged after it was written (half of it, as a full disk or a crash leaves it)
    create_engine(SMALL)
    (path,) = empty_cache.glob("*.tflite")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    # when
    with caplog.at_level(logging.WARNING, logger="stream"):
        engine = create_engine(SMALL)

    # then one warning names the file, and the model was converted and cached again
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "converting it again" in warnings[0], warnings
    assert isinstance(engine, TFLiteEngine)
    assert isinstance(create_engine(SMALL), TFLiteEngine) and cache.entries(
        cache.CompiledModelKey.of(SMALL), "mobilenet"
    )
    photo, name = reliable_photos[0]
    assert engine.classes.names[int(classify(engine, [photo]).argmax())] == name


def test_unwritable_cache_runs_without_caching_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # given a cache folder that cannot be created: its parent is a file (root ignores permission bits)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocker / "cache"))

    # when
    with caplog.at_level(logging.WARNING, logger="stream"):
        engine = create_engine(SMALL)

    # then the model runs on LiteRT from memory, after one warning saying so
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "running without it" in warnings[0], warnings
    assert isinstance(engine, TFLiteEngine)
    assert engine.infer(np.zeros((2, 128, 128, 3), np.uint8)).shape == (2, 1000)


def test_model_the_converter_refuses_runs_on_tensorflow_with_one_warning(
    empty_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a user's classifier with an op TensorFlow Lite has no kernel for (BesselI0e)
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="mnstream_tests")
    class Bessel(keras.layers.Layer):
        def call(self, inputs: tf.Tensor) -> tf.Tensor:
            return tf.math.bessel_i0e(inputs)

    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(Bessel()(inputs))
    model_path = tmp_path / "bessel.keras"
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled)).save(model_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")

    # when
    with caplog.at_level(logging.WARNING, logger="stream"):
        engine = create_engine(ModelConfig(model=str(model_path), labels=str(labels)))

    # then it runs on TensorFlow, after one warning that says why, and nothing is cached
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot convert bessel.keras" in warnings[0], warnings
    assert warnings[0].endswith("running bessel.keras on TensorFlow instead of LiteRT")
    assert isinstance(engine, KerasEngine)
    assert engine.infer(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 3)
    assert not empty_cache.exists() or not list(empty_cache.iterdir())
