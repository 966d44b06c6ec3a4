"""`mnstream train`: a MobileNet taught the classes of a folder of images, exported int8 for the live pipeline."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from stream.arguments import Parser, add_model_arguments, config_from_flags
from stream.commands import EXIT_CODES_HELP, EXIT_OK, CommandConsole, Stopping, run_command
from stream.config import KERAS_MODELS, ModelConfig
from stream.datasets import Decoding, Sample, Split, split_data, warn_skipped
from stream.engines import create_engine
from stream.engines.conversion import Quantization
from stream.evaluation import (
    REPORT_FILES,
    Evaluation,
    check_output_folder,
    evaluate,
    picture_files,
    summary_table,
    write_report,
)
from stream.export import write_export
from stream.sources import ImageReader
from stream.types import SourceInfo, SourceKind, UsageError

if TYPE_CHECKING:
    from stream.transfer import TransferModel

MODEL_FILE, LABELS_FILE, INT8_FILE = "model.keras", "labels.txt", "model_int8.tflite"
OUTPUT_FILES = [MODEL_FILE, LABELS_FILE, INT8_FILE, *REPORT_FILES, *picture_files(["float", "int8"])]
"""Everything a training writes into its output folder."""
AUGMENTED_VIEWS = 8
"""Augmented copies of each training image, besides the image itself, whose features are computed once: as
accurate as new copies every epoch at a fraction of the time (benchmarks/RESULTS.md, "Training")."""


@dataclasses.dataclass(frozen=True, slots=True)
class TrainingOptions:
    """How `mnstream train` trains: its flags beside the model's."""

    epochs: int = 20
    """At most; early stopping on the held-out loss usually ends it sooner."""
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune: int = 0
    """The base's top layers that train after the head; 0 keeps the whole base frozen."""
    augment: bool = True
    seed: int = 0


EPILOG = (
    """\
examples:
  mnstream train photos/ --output parts_model           one folder of images per class in photos/
  mnstream train photos/ --output parts_model --fine-tune 20 --epochs 30
  mnstream --camera 0 --model parts_model/model_int8.tflite       run it live, its labels inside

PHOTOS holds one folder per class, named after the class (photos/ok/*.jpg, photos/scratched/*.jpg), or train/
and val/ folders that each hold those. Without val/, --val-split of each class's images, chosen with --seed, are
held out: training stops when their loss stops falling, and the report measures both models on them. When
every folder is named after an ImageNet class (ants/, bees/), the head is ImageNet's own classifier for those
classes, learnt from far more photos than yours; only its biases train (rename a folder for a new head).
DIR receives model.keras, labels.txt, model_int8.tflite (calibrated on the training images, labels inside),
report.json, report.md, and the confusion matrices and misclassified images as PNGs.
"""
    + EXIT_CODES_HELP
)


def build_parser() -> argparse.ArgumentParser:
    """The `mnstream train` command line."""
    parser = Parser(
        prog="mnstream train",
        description="Teach a MobileNet your own classes from a folder of images, on a CPU in minutes: its ImageNet "
        "features, frozen, under a new head; then an int8 model for `mnstream --model` and a report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="PHOTOS", help="a folder with one folder of images per class")
    parser.add_argument("--output", required=True, metavar="DIR", help="the folder for the model and its report")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    add_model_arguments(parser, tflite=False)
    for action in parser._actions:
        if action.dest == "model.model":
            action.help = f"the named MobileNet to build on: {' | '.join(KERAS_MODELS)} (mobilenet_v2)"
        elif action.dest in {"model.labels", "model.preprocess"}:
            action.help = argparse.SUPPRESS  # a model file's; the classes are PHOTOS' folders
    training = parser.add_argument_group("training")
    default = TrainingOptions()
    training.add_argument(
        "--epochs", type=int, default=default.epochs, metavar="N", help=f"at most this many epochs ({default.epochs})"
    )
    training.add_argument(
        "--batch-size",
        type=int,
        default=default.batch_size,
        metavar="N",
        help=f"images per training step ({default.batch_size})",
    )
    training.add_argument(
        "--learning-rate",
        type=float,
        default=default.learning_rate,
        metavar="RATE",
        help=f"Adam's ({default.learning_rate})",
    )
    training.add_argument(
        "--fine-tune",
        type=int,
        default=default.fine_tune,
        metavar="N",
        help="after the head, also train the base's top N layers, batch norm frozen (0: the base stays frozen); "
        "slower, and worth it when your classes look unlike ImageNet's",
    )
    training.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=default.augment,
        help=f"train on {AUGMENTED_VIEWS} random crops of each image too, mirrored, brightness and contrast "
        "changed (on)",
    )
    training.add_argument(
        "--val-split", type=float, default=0.2, metavar="FRACTION", help="held out from each class without val/ (0.2)"
    )
    training.add_argument(
        "--seed", type=int, default=default.seed, help=f"the split, augmentation and initial weights ({default.seed})"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow's converter log")
    return parser


def main(argv: Sequence[str], *, console: Console | None = None) -> int:
    """Runs `mnstream train` with the arguments after `train`; returns the exit code.

    Returns:
        0 when the model was trained and written, 1 when training failed, 2 for bad usage, 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)

    def run_training(stopping: Stopping) -> int:
        model_options = {key: value for key, value in vars(args).items() if key.startswith("model.")}
        for key, flag in (("model.labels", "--labels"), ("model.preprocess", "--preprocess")):
            if key in model_options:
                raise UsageError(f"{flag} is for running a model file; train names its classes after PHOTOS' folders")
        config = config_from_flags(parser, model_options).model
        _check_options(args, config)
        output = Path(args.output)
        check_output_folder(output, OUTPUT_FILES, overwrite=args.overwrite, data=Path(args.data))
        split = split_data(Path(args.data), val_fraction=args.val_split, seed=args.seed)
        options = TrainingOptions(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            fine_tune=args.fine_tune,
            augment=args.augment,
            seed=args.seed,
        )
        train(
            split,
            config,
            output,
            options,
            data=Path(args.data),
            console=console or CommandConsole(),
            verbose=args.debug,
            stopping=stopping,
        )
        return EXIT_OK

    return run_command(run_training, debug=args.debug)


def _check_options(args: argparse.Namespace, config: ModelConfig) -> None:
    if not config.is_named_keras_model:
        raise UsageError(f"--model {config.model}: train builds on a named MobileNet; give one of them")
    for flag, value, least in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1)):
        if value < least:
            raise UsageError(f"{flag} {value} must be at least {least}")
    if args.learning_rate <= 0:
        raise UsageError(f"--learning-rate {args.learning_rate} must be above 0, such as 0.001")
    if args.fine_tune < 0:
        raise UsageError(f"--fine-tune {args.fine_tune} must be 0 (the base stays frozen) or more")


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    timings[stage] = round(time.monotonic() - started, 2)


def train(
    split: Split,
    config: ModelConfig,
    output: Path,
    options: TrainingOptions,
    *,
    data: Path,
    console: Console,
    verbose: bool = False,
    stopping: Stopping | None = None,
) -> list[Evaluation]:
    """Trains, writes the model, its int8 export and the report into `output`, and prints how to run it.

    Args:
        split: The classes and the images to train on and to hold out.
        config: The named MobileNet to build on, and its weights.
        output: The folder, checked by the caller (`check_output_folder`); created here once training is done.
        data: The data folder, for the report.
        options: How to train.
        console: Where the progress, the results and the command to run the model go.
        verbose: Let TensorFlow's converter log through.
        stopping: The command's signal handler, whose interrupt must undo the output even where Python lost it.

    Returns:
        The float and the int8 model's evaluations on the held-out images.

    Raises:
        UsageError: Too few images decode.
        ModelError: The weights cannot be loaded.
        MnstreamError: TensorFlow Lite cannot convert the model.
    """
    started = time.monotonic()
    timings: dict[str, float] = {}
    with _timed(timings, "load TensorFlow and the base"):
        # Imported here: the checks before this need no TensorFlow, and a refused run should not wait for it.
        from stream.transfer import TransferModel

        transfer = TransferModel(config, split.classes, fine_tune=options.fine_tune, seed=options.seed)
    views = 1 + AUGMENTED_VIEWS if options.augment else 1
    random = np.random.default_rng(options.seed)
    training = Decoding(split.train, transfer.input_size, views=views, random=random)
    held_out = Decoding(split.val, transfer.input_size)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns, console=console) as progress:
        with _timed(timings, "decode, augment and run the frozen base"):
            train_set = _prepared(transfer, training, options, progress, "training images")
            val_set = _prepared(transfer, held_out, options, progress, "held-out images")
        warn_skipped(
            data, [*split.skipped, *training.undecodable, *held_out.undecodable], [*training.huge, *held_out.huge]
        )
        _require_images(split, train_set, val_set, data)
        with _timed(timings, "train"):
            fitted = transfer.fit(train_set.as_data, val_set.as_data, options, progress)
    classifier = transfer.classifier()
    created = not output.exists()
    output.mkdir(exist_ok=True)
    try:
        with _timed(timings, "save model.keras"):
            classifier.save(output / MODEL_FILE)
            (output / LABELS_FILE).write_text("".join(f"{name}\n" for name in split.classes))
        with _timed(timings, "export int8"):
            calibration = [sample.path for sample in train_set.samples]
            _export_int8(output, calibration, console=console, verbose=verbose)
        evaluations = []
        for tag, model in (("float", MODEL_FILE), ("int8", INT8_FILE)):
            with _timed(timings, f"evaluate {tag}"):
                evaluations.append(_evaluate_held_out(output / model, val_set.samples, split.classes, tag=tag))
        timings["total"] = round(time.monotonic() - started, 2)
        about = {
            "classes": list(split.classes),
            "training_images": len(train_set.samples),
            "held_out_images": len(val_set.samples),
            "held_out": split.held_out_by,
            "base": f"{config.model} alpha {config.alpha} size {config.input_size}, weights {config.weights}",
            "head": (
                f"ImageNet's classifier for {', '.join(transfer.imagenet_head)}, its biases trained"
                if transfer.imagenet_head
                else "new"
            ),
            "augmented_views": views - 1,
            "fine_tuned_layers": transfer.fine_tuned_layers,
            "epochs": [each.epochs for each in fitted],
            "best_epochs": [each.best_epoch for each in fitted],
            "history": [each.history for each in fitted],
            "batch_size": options.batch_size,
            "learning_rate": options.learning_rate,
            "seed": options.seed,
            "timings_s": timings,
        }
        write_report(output, evaluations, data=data, about=about)
        if stopping is not None:
            stopping.raise_if_received()
    except BaseException:
        # Half a model (model.keras without its export or report) must not pass for one, nor refuse the rerun.
        for name in OUTPUT_FILES:
            (output / name).unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                output.rmdir()
        raise
    console.print(summary_table(evaluations))
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items() if stage != "total")
    console.print(f"wrote {output} in {timings['total']:.0f} s ({stages})", markup=False)
    console.print(f"run it live: mnstream --camera 0 --model {output / INT8_FILE}", markup=False)
    return evaluations


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    """Images decoded, augmented and through the frozen part of the base: what training runs on."""

    samples: tuple[Sample, ...]
    """The images that decoded."""
    labels: np.ndarray
    """One per view: each sample's label, repeated for its augmented views."""
    stored: np.ndarray
    """The frozen part's output for each view."""

    @property
    def as_data(self) -> tuple[np.ndarray, np.ndarray]:
        return self.stored, self.labels


def _prepared(
    transfer: TransferModel, decoding: Decoding, options: TrainingOptions, progress: Progress, description: str
) -> _Prepared:
    samples: list[Sample] = []
    labels, stored = [], []
    task = progress.add_task(description, total=None, metrics="")
    for chunk in decoding:
        views = len(chunk.images) // max(len(chunk.samples), 1)
        samples += chunk.samples
        labels.append(np.repeat([sample.label for sample in chunk.samples], views))
        stored.append(transfer.stored(chunk.images, batch_size=options.batch_size))
        progress.update(task, completed=len(samples), metrics=f"{sum(map(len, labels))} views")
    progress.update(task, total=len(samples))
    if not samples:
        return _Prepared((), np.zeros(0, int), np.zeros(0))
    return _Prepared(tuple(samples), np.concatenate(labels), np.concatenate(stored))


def _require_images(split: Split, train_set: _Prepared, val_set: _Prepared, data: Path) -> None:
    if not val_set.samples:
        raise UsageError(f"none of the held-out images ({split.held_out_by}) decodes; add images OpenCV can read")
    counts = np.bincount(train_set.labels, minlength=len(split.classes))
    if missing := [name for name, count in zip(split.classes, counts, strict=True) if count == 0]:
        raise UsageError(
            f"no image of class {', '.join(missing)} decodes; add images that OpenCV can read to "
            + ", ".join(str(data / name) for name in missing)
        )


def _export_int8(output: Path, calibration: Sequence[Path], *, console: Console, verbose: bool) -> None:
    """The int8 model through `mnstream export`'s own path, calibrated on the training images."""
    info = SourceInfo(
        0, "training images", SourceKind.IMAGES, width=0, height=0, fps=None, frame_count=len(calibration)
    )
    write_export(
        ModelConfig(model=str(output / MODEL_FILE), labels=str(output / LABELS_FILE)),
        output / INT8_FILE,
        quantization=Quantization.INT8,
        images=ImageReader(list(calibration), info, skip_undecodable=True),
        console=console,
        verbose=verbose,
    )


def _evaluate_held_out(model: Path, samples: Sequence[Sample], classes: Sequence[str], *, tag: str) -> Evaluation:
    """The model file, as `mnstream --model` loads it (labels beside or inside it), on the held-out images."""
    if model.suffix == ".keras":
        # The float model on TensorFlow's own kernels: what it computes, without a compilation to LiteRT first.
        config = ModelConfig(model=str(model), labels=str(model.parent / LABELS_FILE), runtime="tensorflow")
    else:
        config = ModelConfig(model=str(model))
    engine = create_engine(config)
    try:
        return evaluate(engine, Decoding(samples, engine.input_size), classes, tag=tag)
    finally:
        engine.close()
