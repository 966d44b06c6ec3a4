"""Keras models to TensorFlow Lite flatbuffers taking MobileNet's [-1, 1] pixels, their class names inside."""

from __future__ import annotations

import contextlib
import enum
import io
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from stream.engines import PIXEL_SCALES, native_stderr_silenced
from stream.types import MnstreamError, first_line

if TYPE_CHECKING:
    import keras

    from stream.engines.keras import KerasEngine

LABELS_FILE = "labels.txt"
"""The associated file that holds the class names, one a line, in the zip appended to the model."""
INPUT_RANGE = "mobilenet"
"""Every exported model takes pixels scaled to MobileNet's [-1, 1], the LiteRT engine's default `--preprocess`."""


class Quantization(enum.Enum):
    """How the weights (and, for int8, the activations) of the exported model are stored."""

    FLOAT32 = "float32"
    """The Keras model's own float weights and arithmetic: how `mnstream` runs a Keras model on LiteRT."""
    INT8 = "int8"
    """Full-integer post-training quantization, calibrated on images: about 4x smaller and faster than float."""
    FLOAT16 = "float16"
    """Weights stored as float16, computed in float32: half the size, float accuracy, no calibration."""


def to_tflite(
    engine: KerasEngine,
    quantization: Quantization,
    frames: Callable[[], Iterator[list[np.ndarray]]] | None = None,
    *,
    verbose: bool = False,
) -> bytes:
    """The engine's model as a .tflite that takes pixels scaled to [-1, 1], its class names appended.

    Args:
        engine: The Keras model as `mnstream --model` loads it, with its input range and class names.
        quantization: How the weights are stored.
        frames: The int8 calibration set (see `calibration_frames`); None otherwise.
        verbose: Let TensorFlow's converter log through instead of hiding it.

    Raises:
        MnstreamError: TensorFlow Lite cannot convert the model.
    """
    model = taking_mobilenet_input(engine.model, engine.preprocess)
    with _converter_quiet(verbose=verbose):
        flatbuffer = _convert(model, quantization, frames, name=engine.name)
    return _with_labels(flatbuffer, engine.classes.names)


def taking_mobilenet_input(model: keras.Model, preprocess: str) -> keras.Model:
    """`model` behind a layer that maps MobileNet's [-1, 1] to the range it was trained on, where they differ.

    The MobileNetV3 applications scale 0..255 pixels themselves; wrapped, they take what the LiteRT engine feeds
    every model by default, like the coral models.
    """
    if preprocess == INPUT_RANGE:
        return model
    import keras

    # x = pixel * base_scale + base_offset, and the model wants pixel * scale + offset.
    base_scale, base_offset = PIXEL_SCALES[INPUT_RANGE]
    scale, offset = PIXEL_SCALES[preprocess]
    inputs = keras.Input(model.input_shape[1:])
    pixels = keras.layers.Rescaling(scale / base_scale, offset=offset - base_offset * scale / base_scale)(inputs)
    return keras.Model(inputs, model(pixels), name=f"{model.name}_taking_mobilenet_input")


@contextlib.contextmanager
def _converter_quiet(*, verbose: bool) -> Iterator[None]:
    """Hides the converter's chatter, which TensorFlow logs natively."""
    if verbose:
        yield
        return
    with native_stderr_silenced(), warnings.catch_warnings():
        # It wants TF1-style (mean, std) input statistics; the calibration sets the int8 input's instead.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        yield


def _convert(
    model: keras.Model,
    quantization: Quantization,
    frames: Callable[[], Iterator[list[np.ndarray]]] | None,
    *,
    name: str,
) -> bytes:
    """The TensorFlow Lite flatbuffer of `model`, with a resizable batch.

    Raises:
        MnstreamError: The converter failed (its log shows with --debug).
    """
    import tensorflow as tf

    # The batch stays None, so the LiteRT engine can run a whole batch in one call.
    signature = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
    call = tf.function(lambda images: model(images, training=False), input_signature=[signature])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([call.get_concrete_function()], model)
    # The converter freezes the function's variables into constants itself, in a second or two. Lowered to a
    # SavedModel first (its default, and `from_keras_model`'s only way for Keras 3), a conversion takes several
    # times longer, and a Keras 3 model saved that way as the function's owner loses its weights (NaN outputs).
    converter.experimental_lower_to_saved_model = False
    if quantization is not Quantization.FLOAT32:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization is Quantization.INT8:
        converter.representative_dataset = frames
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # int8 rather than uint8 in and out: int8 is what the graph computes in, so no QUANTIZE ops at its ends
        # (uint8 adds one each side), which saves more than the engine's lookup from pixel to int8 costs
        # (benchmarks/RESULTS.md).
        converter.inference_input_type = converter.inference_output_type = tf.int8
    elif quantization is Quantization.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except MnstreamError:
        raise  # an unreadable calibration image, raised by `frames`
    except Exception as error:
        raise MnstreamError(
            f"TensorFlow Lite cannot convert {name}: {first_line(error)}; --debug shows the converter's log"
        ) from None


def _with_labels(flatbuffer: bytes, names: Sequence[str]) -> bytes:
    """The model followed by a zip archive holding `LABELS_FILE`.

    This is how TFLite metadata packs associated files: the flatbuffer loads as it is, and the file is a zip too,
    where `read_metadata_labels` finds the labels.
    """
    buffer = io.BytesIO(flatbuffer)
    # Appending to bytes that are not a zip starts a new archive after them, with offsets from the file's start.
    with zipfile.ZipFile(buffer, "a") as archive:
        # A ZipInfo's fixed 1980 date rather than now: the same model and labels give the same bytes.
        archive.writestr(zipfile.ZipInfo(LABELS_FILE), "".join(f"{name}\n" for name in names))
    return buffer.getvalue()
