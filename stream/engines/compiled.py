"""Keras models on LiteRT: compiled once to a float32 .tflite, cached, and loaded later without TensorFlow."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from stream import cache
from stream.config import ModelConfig
from stream.engines import Engine, tensorflow_installed, tensorflow_missing
from stream.engines.conversion import INPUT_RANGE, Quantization, to_tflite
from stream.engines.tflite import TFLiteEngine
from stream.labels import read_metadata_labels
from stream.types import MnstreamError, ModelError, first_line

log = logging.getLogger(__name__)

PRECISION = "float32"
"""The Keras model's own arithmetic: the same predictions, on XNNPACK's kernels instead of TensorFlow's."""


def compiled_engine(config: ModelConfig) -> Engine:
    """The Keras model `config` names, on LiteRT: from the cache, else converted now and cached.

    A model the converter refuses runs on TensorFlow instead, with one warning saying why; a cache entry that
    does not load is converted again, with one warning, and a cache that cannot be written is done without.

    Raises:
        ModelError: The model, its weights or its labels cannot be used, or it is not in the cache and
            TensorFlow, which would convert it, is not installed.
        MnstreamError: The ImageNet weights cannot be downloaded.
    """
    name = Path(config.model).name
    key = cache.CompiledModelKey.of(config, precision=PRECISION)
    for path in cache.entries(key, name) if key is not None else []:
        try:
            return _load_cached(path, config)
        except ModelError as error:
            then = "converting it again" if key.converter is not None else "looking for an older one"
            log.warning(f"the cached {name} ({path}) does not load ({error}); {then}")
    if not tensorflow_installed():
        raise tensorflow_missing(config)
    return _convert(config, key)


def _load_cached(path: Path, config: ModelConfig) -> TFLiteEngine:
    labels = read_metadata_labels(path)
    if labels is None:
        # Every compiled model carries its class names: without them the file is damaged, not an old format.
        raise ModelError("its class names are missing")
    return TFLiteEngine.load(path, labels, name=Path(config.model).name, preprocess=INPUT_RANGE, threads=config.threads)


def _convert(config: ModelConfig, key: cache.CompiledModelKey | None) -> Engine:
    # Imported here: only a conversion needs TensorFlow.
    from stream.engines.keras import KerasEngine

    started_at = time.monotonic()
    keras_engine = KerasEngine.from_config(config)
    try:
        model = to_tflite(keras_engine, Quantization.FLOAT32)
    except MnstreamError as error:
        log.warning(f"{first_line(error)}; running {keras_engine.name} on TensorFlow instead of LiteRT")
        return keras_engine
    # Keras may have downloaded the weights just now: the key can name them from here on.
    key = key or cache.CompiledModelKey.of(config, precision=PRECISION)
    stored = cache.store(key, keras_engine.name, model) if key is not None else None
    log.info(
        f"compiled {keras_engine.name} to LiteRT in {time.monotonic() - started_at:.1f} s"
        + (f", kept in {stored}" if stored is not None else "")
    )
    try:
        return TFLiteEngine.load(
            stored or model,
            keras_engine.classes,
            name=keras_engine.name,
            preprocess=INPUT_RANGE,
            threads=config.threads,
        )
    finally:
        keras_engine.close()
