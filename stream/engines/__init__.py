"""The Engine protocol and the factory that picks one for a model; heavy imports stay in the engine modules."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from stream.config import KERAS_MODELS, ModelConfig
from stream.labels import ClassNames, read_labels_file
from stream.types import ModelError

PIXEL_SCALES = {"mobilenet": (1 / 127.5, -1.0), "unit": (1 / 255, 0.0), "raw": (1.0, 0.0)}
"""`--preprocess` mode -> (scale, offset) that maps a uint8 pixel to the model's input value."""


class Engine(Protocol):
    """A classifier that turns a batch of RGB uint8 images into class probabilities."""

    name: str
    input_size: tuple[int, int]
    """(width, height) that `infer` expects."""
    classes: ClassNames

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Runs the model on an (N, height, width, 3) uint8 RGB batch; returns (N, classes) probabilities.

        Several threads may call it at once: the pipeline keeps `BATCHES_IN_FLIGHT` batches in the model.
        """
        ...

    def close(self) -> None: ...


def create_engine(config: ModelConfig) -> Engine:
    """Loads the model that `config.model` names: a Keras MobileNet, a Keras model file or a .tflite file; or, for
    `config.engine` serve, finds the model `mnstream serve` deployed on the Ray cluster at `config.address`.

    A Keras model runs on LiteRT, compiled once and cached, unless `config.runtime` asks for TensorFlow.

    Raises:
        ModelError: The model, its weights or its labels cannot be used, or no cluster serves one.
    """
    # Imported inside the branches: a .tflite run, or a Keras one from the cache, must never load TensorFlow.
    if config.engine == "serve":
        from stream.engines.remote import RemoteEngine

        return RemoteEngine.connect(config.address)
    if config.is_tflite:
        from stream.engines.tflite import TFLiteEngine

        return TFLiteEngine.from_config(config)
    require_keras_model(config)
    if config.runtime == "litert":
        from stream.engines.compiled import compiled_engine

        return compiled_engine(config)
    from stream.engines.keras import KerasEngine

    return KerasEngine.from_config(config)


def require_keras_model(config: ModelConfig) -> None:
    """Checks, before TensorFlow loads (seconds), that `config.model` names a Keras MobileNet or an existing file,
    and that its labels file, if any, can be read.

    Raises:
        ModelError: A mistyped model name or path, or a labels file that cannot be read.
    """
    if not config.is_named_keras_model and not Path(config.model).is_file():
        raise ModelError(f"model {config.model} is neither a file nor one of {', '.join(KERAS_MODELS)}; check --model")
    if config.labels is not None:
        read_labels_file(config.labels)


def require_tensorflow_if_needed(config: ModelConfig) -> None:
    """Checks, before any frame is read, that a Keras model can run here: TensorFlow is needed to convert it to
    LiteRT (a converted model in the cache needs none) or to run it on TensorFlow's kernels.

    Raises:
        ModelError: It needs TensorFlow, which is not installed; the message says what to do.
    """
    if config.is_tflite or config.engine == "serve" or tensorflow_installed():
        return
    require_keras_model(config)
    if config.runtime == "litert":
        from stream import cache

        key = cache.CompiledModelKey.of(config)
        if key is not None and cache.entries(key, Path(config.model).name):
            return
    raise tensorflow_missing(config)


def tensorflow_missing(config: ModelConfig) -> ModelError:
    """The error for a Keras model that needs TensorFlow where it is not installed, saying what to do."""
    if config.runtime == "litert":
        why = "converting it to LiteRT, which this run would do once,"
    else:
        why = "running it on TensorFlow's kernels (--runtime tensorflow)"
    return ModelError(
        f"{config.model} is a Keras model, and {why} needs TensorFlow, which is not installed; install it with "
        "pip install 'mnstream[cpu]' (or [gpu]), or run a .tflite model (`mnstream export` makes one)"
    )


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported, found without importing it (seconds)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Hides what native code writes to stderr while the block runs.

    TensorFlow's C++ start-up notices (oneDNN, CPU features) ignore TF_CPP_MIN_LOG_LEVEL, and LiteRT announces
    its XNNPACK delegate; they would bury the one-line messages users need to read. Python errors still
    surface: they are exceptions, not output.
    """
    if sys.stderr is None:  # started with standard error closed (2>&-): nothing to hide
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
