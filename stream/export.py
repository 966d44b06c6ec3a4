"""`mnstream export`: a Keras MobileNet or a user's model as an int8 or float16 .tflite with its labels inside."""

from __future__ import annotations

import argparse
import glob
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from stream.arguments import Parser, add_model_arguments, config_from_flags
from stream.commands import EXIT_CODES_HELP, EXIT_OK, CommandConsole, Stopping, run_command
from stream.config import ModelConfig
from stream.engines import PIXEL_SCALES, require_keras_model
from stream.engines.conversion import INPUT_RANGE, Quantization, to_tflite
from stream.outputs import check_writable
from stream.recognizer import model_input
from stream.sources import IMAGE_SUFFIXES, FrameReader, ImageReader
from stream.types import SourceError, UsageError

EPILOG = (
    """\
examples:
  mnstream export --model mobilenet_v2 --int8 --calibration photos/ --output mobilenet_v2_int8.tflite
  mnstream export --model mobilenet_v3_large --float16 --output v3_large_f16.tflite
  mnstream export --model my_model.keras --labels labels.txt --int8 --calibration 'frames/*.jpg' --output my.tflite
  mnstream --source clip.mp4 --model mobilenet_v2_int8.tflite    run it, without TensorFlow

The .tflite takes pixels scaled to [-1, 1] whatever the model's own input range (MobileNetV3 takes 0..255 and
is wrapped), and carries its class names (labels.txt in a zip after the model, as TFLite metadata packs them),
so `mnstream --model FILE.tflite` needs neither --preprocess nor --labels.
Calibration images should look like what the model will see: a few hundred frames or photos is plenty.
"""
    + EXIT_CODES_HELP
)


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

    def run_export(stopping: Stopping) -> int:
        quantization = _quantization(args.int8, args.float16, args.calibration)
        model_options = {key: value for key, value in vars(args).items() if key.startswith("model.")}
        config = config_from_flags(parser, model_options).model
        check_writable(args.output, option="--output", overwrite=args.overwrite, suffixes=(".tflite",))
        export(
            config,
            Path(args.output),
            quantization=quantization,
            calibration=args.calibration,
            console=console or CommandConsole(),
            verbose=args.debug,
        )
        return EXIT_OK

    return run_command(run_export, debug=args.debug)


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
    if config.is_tflite:
        raise UsageError(f"{config.model} is a TensorFlow Lite model already; export converts a Keras model")
    require_keras_model(config)
    images = _open_calibration(calibration) if quantization is Quantization.INT8 else None
    write_export(config, output, quantization=quantization, images=images, console=console, verbose=verbose)


def write_export(
    config: ModelConfig,
    output: Path,
    *,
    quantization: Quantization,
    images: FrameReader | None,
    console: Console,
    verbose: bool = False,
) -> None:
    """Builds the Keras model `config` names, converts it with its labels, and writes it, showing each stage.

    Args:
        config: A Keras model, checked by `require_keras_model`.
        output: The .tflite file to write.
        quantization: int8 or float16.
        images: The int8 calibration images, read once; None for float16.
        console: Where the progress and the final line go.
        verbose: Let TensorFlow's converter log through instead of hiding it.

    Raises:
        ModelError: The model, its weights or its labels cannot be used.
        MnstreamError: TensorFlow Lite cannot convert the model.
    """
    started = time.monotonic()
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
