"""`mnstream export`: a Keras MobileNet or a user's model as an int8 or float16 .tflite with its labels inside."""

from __future__ import annotations

import argparse
import contextlib
import enum
import glob
import io
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from stream.cli import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CommandConsole,
    Parser,
    add_model_arguments,
    config_from_flags,
    report_error,
)
from stream.config import ModelConfig
from stream.engines import PIXEL_SCALES, first_line, native_stderr_silenced, require_keras_model
from stream.outputs import check_writable
from stream.recognizer import model_input
from stream.sources import IMAGE_SUFFIXES, FrameReader, ImageReader
from stream.types import MnstreamError, SourceError, UsageError

if TYPE_CHECKING:
    import keras

    from stream.engines.keras import KerasEngine

LABELS_FILE = "labels.txt"
"""The associated file that holds the class names, one a line, in the zip appended to the model."""
INPUT_RANGE = "mobilenet"
"""Every exported model takes pixels scaled to MobileNet's [-1, 1], the LiteRT engine's default `--preprocess`."""

EPILOG = """\
examples:
  mnstream export --model mobilenet_v2 --int8 --calibration photos/ --output mobilenet_v2_int8.tflite
  mnstream export --model mobilenet_v3_large --float16 --output v3_large_f16.tflite
  mnstream export --model my_model.keras --labels labels.txt --int8 --calibration 'frames/*.jpg' --output my.tflite
  mnstream --source clip.mp4 --model mobilenet_v2_int8.tflite    run it, without TensorFlow

The .tflite takes pixels scaled to [-1, 1] whatever the model's own input range (MobileNetV3 takes 0..255 and
is wrapped), and carries its class names (labels.txt in a zip after the model, as TFLite metadata packs them),
so `mnstream --model FILE.tflite` needs neither --preprocess nor --labels.
Calibration images should look like what the model will see: a few hundred frames or photos is plenty.
Exit codes: 0 ok, 1 runtime failure, 2 bad usage, 130 interrupted (Ctrl-C).
"""


class Quantization(enum.Enum):
    """How the weights (and, for int8, the activations) of the exported model are stored."""

    FLOAT32 = "float32"
    """The Keras model's own float weights and arithmetic: how `mnstream` runs a Keras model on LiteRT."""
    INT8 = "int8"
    """Full-integer post-training quantization, calibrated on images: about 4x smaller and faster than float."""
    FLOAT16 = "float16"
    """Weights stored as float16, computed in float32: half the size, float accuracy, no calibration."""


def build_parser() -> argparse.ArgumentParser:
    """The `mnstream export` command line."""
    parser = Parser(
        prog="mnstream export",
        description="Export a Keras MobileNet, or your own Keras classifier, to a TensorFlow Lite model for "
        "LiteRT: int8 (calibrated on your images) or float16, with its class names inside.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser, tflite=False)

    quantization = parser.add_argument_group("quantization (one of)")
    quantization.add_argument(
        "--int8", action="store_true", help="full-integer: smallest and fastest on CPUs; needs --calibration"
    )
    quantization.add_argument(
        "--calibration",
        metavar="FOLDER|GLOB",
        help="images like those the model will see (a folder or a quoted glob such as 'frames/*.jpg'), for --int8",
    )
    quantization.add_argument("--float16", action="store_true", help="float16 weights: half the size, float accuracy")

    parser.add_argument("--output", required=True, metavar="FILE.tflite", help="the model file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow's converter log")
    return parser


def main(argv: Sequence[str], *, console: Console | None = None) -> int:
    """Runs `mnstream export` with the arguments after `export`; returns the exit code.

    Args:
        argv: The command-line arguments, without the program name and the `export` subcommand.
        console: Where progress and the result go; the terminal when None.

    Returns:
        0 when the model was written, 1 when the export failed, 2 for bad usage, 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    console = console or CommandConsole()
    try:
        quantization = _quantization(args.int8, args.float16, args.calibration)
        model_options = {key: value for key, value in vars(args).items() if key.startswith("model.")}
        config = config_from_flags(parser, model_options).model
        check_writable(args.output, option="--output", overwrite=args.overwrite, suffixes=(".tflite",))
        export(
            config,
            Path(args.output),
            quantization=quantization,
            calibration=args.calibration,
            console=console,
            verbose=args.debug,
        )
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        return report_error(error, debug=args.debug)


def export(
    config: ModelConfig,
    output: Path,
    *,
    quantization: Quantization,
    calibration: str | None = None,
    console: Console,
    verbose: bool = False,
) -> None:
    """Builds the model `config` names as the Keras engine would, converts it, and writes it with its labels.

    Args:
        config: The model, its weights, size, labels and input range, as for `mnstream --model`.
        output: The .tflite file to write, checked by the caller (`check_writable`).
        quantization: int8 or float16.
        calibration: A folder or glob of images to calibrate int8 activations on; required for int8 only.
        console: Where the progress and the final line go.
        verbose: Let TensorFlow's converter log through instead of hiding it.

    Raises:
        UsageError: The output path or the calibration set is unusable (checked before any slow work).
        ModelError: The model, its weights or its labels cannot be used.
        MnstreamError: TensorFlow Lite cannot convert the model.
    """
    started = time.monotonic()
    if config.is_tflite:
        raise UsageError(f"{config.model} is a TensorFlow Lite model already; export converts a Keras model")
    require_keras_model(config)
    images = _open_calibration(calibration) if quantization is Quantization.INT8 else None
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        building = progress.add_task(f"building {config.model}", total=None)
        # The Keras engine's own loading: the exported model is the one `mnstream --model` runs, with the same
        # weights, size checks and labels.
        from stream.engines.keras import KerasEngine

        engine = KerasEngine.from_config(config)
        try:
            progress.update(building, total=1, completed=1)
            frames = None
            if images is not None:
                # Started by the first image the converter asks for, after it has traced the model.
                task = progress.add_task("calibrating", total=images.info.frame_count, start=False)
                frames = calibration_frames(
                    images,
                    engine.input_size,
                    on_start=lambda: progress.start_task(task),
                    on_frame=lambda: progress.advance(task),
                )
            converting = progress.add_task(f"converting to {quantization.value}", total=None)
            model = to_tflite(engine, quantization, frames, verbose=verbose)
            progress.update(converting, total=1, completed=1)
            labels = len(engine.classes)
        finally:
            engine.close()
    output.write_bytes(model)
    size_mb = output.stat().st_size / 1e6
    console.print(
        f"wrote {output} ({size_mb:.1f} MB, {quantization.value}, {labels} labels) "
        f"in {time.monotonic() - started:.1f} s"
    )


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
    model = _taking_mobilenet_input(engine.model, engine.preprocess)
    with _converter_quiet(verbose=verbose):
        flatbuffer = _convert(model, quantization, frames, name=engine.name)
    return _with_labels(flatbuffer, engine.classes.names)


def _quantization(int8: bool, float16: bool, calibration: str | None) -> Quantization:
    if int8 and float16:
        raise UsageError("give --int8 or --float16, not both")
    if not (int8 or float16):
        raise UsageError("choose a quantization: --int8 --calibration FOLDER|GLOB, or --float16")
    if float16 and calibration is not None:
        raise UsageError("--calibration is for --int8; float16 needs no calibration")
    return Quantization.INT8 if int8 else Quantization.FLOAT16


def _open_calibration(source: str | None) -> ImageReader:
    if source is None:
        raise UsageError("--int8 needs --calibration FOLDER|GLOB: images like those the model will see")
    if not glob.has_magic(source) and not Path(source).exists():
        raise UsageError(f"--calibration {source} does not exist; give a folder or a quoted glob of images")
    try:
        return ImageReader.open(source, stream_id=0)
    except SourceError:
        raise UsageError(
            f"no calibration images in {source}; pass --calibration a folder or a quoted glob of "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} images like those the model will see"
        ) from None


def calibration_frames(
    images: FrameReader,
    size: tuple[int, int],
    *,
    on_start: Callable[[], None] = lambda: None,
    on_frame: Callable[[], None] = lambda: None,
) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's representative dataset: each of `images` as the pipeline feeds it, scaled to [-1, 1].

    Args:
        images: Photos or a video's frames, read once, when the converter asks for them.
        size: The model's (width, height).
        on_start: Called when the converter asks for the first frame, after it has traced the model.
        on_frame: Called after the converter has taken each frame.
    """
    scale, offset = PIXEL_SCALES[INPUT_RANGE]

    def frames() -> Iterator[list[np.ndarray]]:
        on_start()
        while (item := images.read()) is not None:
            yield [model_input(item.image, size)[None].astype(np.float32) * scale + offset]
            on_frame()

    return frames


def _taking_mobilenet_input(model: keras.Model, preprocess: str) -> keras.Model:
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
    """Hides the converter's chatter: Keras prints the SavedModel's signature, TensorFlow logs natively."""
    if verbose:
        yield
        return
    import keras

    interactive = keras.config.is_interactive_logging_enabled()
    # Sends Keras' "Saved artifact at ..." listing to absl's log, which is off by default, instead of stdout.
    keras.config.disable_interactive_logging()
    try:
        with native_stderr_silenced(), warnings.catch_warnings():
            # It wants TF1-style (mean, std) input statistics; the calibration sets the int8 input's instead.
            warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
            yield
    finally:
        if interactive:
            keras.config.enable_interactive_logging()


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

    # Keras 3 models go through a SavedModel of their inference call; the batch stays None, so the LiteRT engine
    # runs a whole batch in one call.
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization is not Quantization.FLOAT32:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization is Quantization.INT8:
        converter.representative_dataset = frames
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # int8 rather than uint8 in and out: int8 is what the graph computes in, so no QUANTIZE ops at its ends
        # (uint8 adds one each side). Measured on MobileNetV2 1.0/224 at batch 8, 2 threads: invoke takes 1.71 ms
        # a frame for int8 against 1.84 for uint8, which more than pays for the engine's 256-entry lookup from
        # pixel to int8 (0.08 ms a frame); uint8 pixels could go in unchanged, but no faster overall.
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
