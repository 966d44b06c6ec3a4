"""Keras MobileNets (V1, V2, V3, or a user's fine-tuned model) in one compiled tf.function."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stream.config import ModelConfig
from stream.engines import PIXEL_SCALES, native_stderr_silenced
from stream.labels import ClassNames, imagenet_classes, read_labels_file
from stream.types import MnstreamError, ModelError, first_line

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
with native_stderr_silenced():
    import keras
    import tensorflow as tf

_APPLICATIONS = {
    "mobilenet": keras.applications.MobileNet,
    "mobilenet_v2": keras.applications.MobileNetV2,
    "mobilenet_v3_small": keras.applications.MobileNetV3Small,
    "mobilenet_v3_large": keras.applications.MobileNetV3Large,
}


class KerasEngine:
    """Runs a Keras classifier on uint8 batches; casting and scaling happen inside the compiled graph.

    Attributes:
        model: The Keras model, as built or loaded, without the engine's scaling or softmax.
        preprocess: The `PIXEL_SCALES` mode that maps pixels to the values `model` takes.
    """

    def __init__(self, model: keras.Model, classes: ClassNames, *, name: str, preprocess: str) -> None:
        shape = model.input_shape
        if len(shape) != 4 or shape[3] != 3 or None in shape[1:3]:
            raise ModelError(f"{name} takes input {shape}; an image classifier takes (N, height, width, 3)")
        _, height, width, _ = shape
        self.name = name
        self.input_size = (int(width), int(height))
        self.preprocess = preprocess
        scale, offset = PIXEL_SCALES[preprocess]
        # A user's model may end in logits; the Keras applications end in a softmax.
        probe = np.asarray(model(np.zeros((1, height, width, 3), np.float32), training=False))
        if probe.ndim != 2:
            raise ModelError(f"{name} outputs shape {probe.shape}; a classifier outputs (N, classes)")
        needs_softmax = not (np.all(probe >= 0) and np.allclose(probe.sum(axis=1), 1.0, atol=1e-3))
        self.classes = classes.matching(probe.shape[1], model=name)

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)])
        def infer(images: tf.Tensor) -> tf.Tensor:
            scores = model(tf.cast(images, tf.float32) * scale + offset, training=False)
            return tf.nn.softmax(scores) if needs_softmax else scores

        self._infer = infer
        self.model = model

    @classmethod
    def from_config(cls, config: ModelConfig) -> KerasEngine:
        if config.is_named_keras_model:
            model = build_application(config)
            name = config.model
        else:
            model = _load_model_file(config.model)
            name = Path(config.model).name
        classes = read_labels_file(config.labels) if config.labels else imagenet_classes()
        return cls(model, classes, name=name, preprocess=config.keras_input_range)

    def infer(self, images: np.ndarray) -> np.ndarray:
        return self._infer(images).numpy()

    def close(self) -> None:
        keras.backend.clear_session()


def build_application(config: ModelConfig) -> keras.Model:
    """The named Keras MobileNet that `config` asks for, with its weights.

    Raises:
        ModelError: A weights file that is missing or does not fit, or a size or alpha the model does not have.
        MnstreamError: The ImageNet weights are neither cached nor downloadable.
    """
    weights: str | None = config.weights
    if weights == "none":
        weights = None
    elif weights != "imagenet" and not Path(weights).is_file():
        raise ModelError(f"weights file {weights} does not exist; pass --weights imagenet, none or a .h5 path")
    size = config.input_size
    try:
        return _APPLICATIONS[config.model](input_shape=(size, size, 3), alpha=config.alpha, weights=weights)
    except ValueError as error:
        raise ModelError(f"{config.model} alpha={config.alpha} size={size}: {first_line(error)}") from None
    except Exception as error:
        if weights != "imagenet":
            raise ModelError(f"cannot load weights {weights} into {config.model}: {first_line(error)}") from None
        cache = os.environ.get("KERAS_HOME", "~/.keras")
        raise MnstreamError(
            f"cannot get ImageNet weights for {config.model} alpha={config.alpha} size={size} "
            f"({first_line(error)}); connect once so Keras caches them in {cache}/models, or pass --weights PATH"
        ) from None


def _load_model_file(path: str) -> keras.Model:
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:
        raise ModelError(f"model {path} cannot be loaded by Keras: {first_line(error)}") from None
