"""`mnstream evaluate`, and the report it shares with `mnstream train`: accuracy, per-class precision and recall,
the confusion matrix and the misclassified images of a model on labelled images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from stream.arguments import Parser, add_model_arguments, add_runtime_arguments, config_from_flags
from stream.charts import confusion_image, contact_sheet
from stream.commands import EXIT_CODES_HELP, EXIT_OK, CommandConsole, Stopping, run_command
from stream.datasets import (
    SPLIT_FOLDERS,
    Decoded,
    Decoding,
    Sample,
    batches,
    class_folders,
    listed,
    warn_skipped,
)
from stream.engines import Engine, create_engine
from stream.outputs import check_writable
from stream.types import UsageError

REPORT_FILES = ("report.json", "report.md")
BATCH_SIZE = 32

EPILOG = (
    """\
examples:
  mnstream evaluate photos/ --model trained/model_int8.tflite --output int8_report
  mnstream evaluate photos/ --model trained/model.keras --labels trained/labels.txt   float, on the console
  mnstream evaluate photos/ --model mobilenet_v2                 an ImageNet model, on folders named after its classes

PHOTOS holds one folder of images per class, named as the model's labels name them (or train/ and val/ folders
that hold them: val/ is evaluated). --output DIR writes report.json, report.md, the confusion matrix and a contact
sheet of the misclassified images as PNGs.
"""
    + EXIT_CODES_HELP
)


@dataclasses.dataclass(frozen=True, slots=True)
class Miss:
    """A misclassified image: its file, its true class, the class the model gave it and that class's score."""

    path: Path
    true: str
    predicted: str
    score: float


@dataclasses.dataclass(frozen=True, slots=True)
class Evaluation:
    """How one model did on labelled images.

    Attributes:
        model: The model's name (its file name).
        tag: Names this evaluation's pictures (`confusion-TAG.png`): float, int8, or the model's own.
        labels: The confusion matrix's rows and columns: the data's classes, then any other class predicted.
        confusion: counts[true][predicted], in `labels` order.
        misses: The misclassified images, in the data's order.
        seconds: How long the predictions took, decoding included.
    """

    model: str
    tag: str
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    misses: tuple[Miss, ...]
    seconds: float

    @property
    def images(self) -> int:
        return int(np.sum(self.confusion))

    @property
    def accuracy(self) -> float:
        matrix = np.array(self.confusion)
        return float(np.trace(matrix) / max(matrix.sum(), 1))

    def per_class(self) -> dict[str, dict[str, float | int | None]]:
        """Each class's precision, recall (None where undefined: nothing predicted, no images) and image count."""
        matrix = np.array(self.confusion)
        rows = {}
        for index, name in enumerate(self.labels):
            correct, predicted, actual = matrix[index, index], matrix[:, index].sum(), matrix[index].sum()
            rows[name] = {
                "precision": float(correct / predicted) if predicted else None,
                "recall": float(correct / actual) if actual else None,
                "images": int(actual),
            }
        return rows

    def as_json(self, root: Path) -> dict[str, object]:
        return {
            "model": self.model,
            "tag": self.tag,
            "images": self.images,
            "accuracy": self.accuracy,
            "per_class": self.per_class(),
            "confusion": {"labels": list(self.labels), "matrix": [list(row) for row in self.confusion]},
            "misclassified": [
                {
                    "image": listed([miss.path], root),
                    "true": miss.true,
                    "predicted": miss.predicted,
                    "score": miss.score,
                }
                for miss in self.misses
            ],
            "seconds": round(self.seconds, 2),
        }


def evaluate(
    engine: Engine,
    chunks: Iterable[Decoded],
    classes: Sequence[str],
    *,
    tag: str,
    on_batch: Callable[[int], None] = lambda count: None,
) -> Evaluation:
    """Runs `engine` on labelled images and counts what it got right.

    Args:
        engine: The model.
        chunks: The images, decoded to the model's input, with their files and labels (indices into `classes`).
        classes: The data's class names, each one of the model's.
        tag: As `Evaluation.tag`.
        on_batch: Called with the number of images after each batch.
    """
    started = time.monotonic()
    names = engine.classes.names
    results: list[tuple[Sample, int, float]] = []
    for chunk in chunks:
        for start, batch in zip(
            range(0, len(chunk.images), BATCH_SIZE), batches(chunk.images, BATCH_SIZE), strict=True
        ):
            probabilities = engine.infer(batch)
            samples = chunk.samples[start : start + len(batch)]
            results += zip(
                samples, probabilities.argmax(axis=1).tolist(), probabilities.max(axis=1).tolist(), strict=True
            )
            on_batch(len(batch))
    others = sorted({names[index] for _, index, _ in results} - set(classes))
    labels = (*classes, *others)
    matrix = np.zeros((len(labels), len(labels)), int)
    misses = []
    for sample, index, score in results:
        true, guess = classes[sample.label], names[index]
        matrix[labels.index(true), labels.index(guess)] += 1
        if guess != true:
            misses.append(Miss(sample.path, true, guess, float(score)))
    return Evaluation(
        engine.name,
        tag,
        labels,
        tuple(tuple(int(count) for count in row) for row in matrix),
        tuple(misses),
        time.monotonic() - started,
    )


def require_classes(engine: Engine, classes: Sequence[str], data: Path) -> None:
    """Checks that each class folder names one of the model's classes.

    Raises:
        UsageError: A folder the model has no class for.
    """
    if unknown := [name for name in classes if name not in engine.classes.names]:
        known = ", ".join(engine.classes.names[:10]) + (", ..." if len(engine.classes) > 10 else "")
        raise UsageError(
            f"{engine.name} has no class {', '.join(unknown)} (its classes: {known}); name the folders in {data} "
            "after the model's labels"
        )


def check_output_folder(folder: Path, files: Iterable[str], *, overwrite: bool, data: Path) -> None:
    """Fails before any work if the folder's files cannot be written, or exist and `overwrite` is off.

    Raises:
        UsageError: As `check_writable`, for the folder where it does not exist yet and for each file in it; or the
            folder is inside the data folder `data`, where its PNGs would be read as images of a class next time.
    """
    if folder.resolve().is_relative_to(data.resolve()):
        raise UsageError(
            f"--output {folder} is inside {data}, where its pictures would be taken for a class's images; "
            "choose a folder outside it"
        )
    if not folder.exists():
        check_writable(folder, option="--output", overwrite=False)
        return
    if not folder.is_dir():
        raise UsageError(f"--output {folder} is a file; give a folder for the results")
    for name in files:
        check_writable(folder / name, option="--output", overwrite=overwrite)


def picture_files(tags: Iterable[str]) -> list[str]:
    """The PNG files a report of evaluations with these tags writes."""
    return [f"{kind}-{tag}.png" for tag in tags for kind in ("confusion", "misclassified")]


def write_report(
    folder: Path, evaluations: Sequence[Evaluation], *, data: Path, about: dict[str, object]
) -> list[Path]:
    """Writes report.json, report.md, a confusion matrix PNG per evaluation and, where it missed any, a contact
    sheet of the images it got wrong.

    Args:
        folder: An existing folder.
        evaluations: One per model.
        data: The data folder; image names in the report are relative to it.
        about: What else the report says (the data, the split, the training and its timings), as JSON values.

    Returns:
        The files written.
    """
    written = [folder / name for name in REPORT_FILES]
    report = {"data": str(data), **about, "models": [each.as_json(data) for each in evaluations]}
    written[0].write_text(json.dumps(report, indent=2) + "\n")
    written[1].write_text(_markdown(report))
    for each in evaluations:
        confusion, sheet = (folder / name for name in picture_files([each.tag]))
        title = f"{each.model} on {each.images} images: accuracy {each.accuracy:.1%}"
        cv2.imwrite(str(confusion), confusion_image(each.labels, np.array(each.confusion), title=title))
        written.append(confusion)
        if each.misses:
            captions = [
                (miss.path, f"{miss.path.name}\n{miss.true} -> {miss.predicted} {miss.score:.2f}")
                for miss in each.misses
            ]
            cv2.imwrite(str(sheet), contact_sheet(captions, title=f"{each.model}: {len(each.misses)} misclassified"))
            written.append(sheet)
        else:
            sheet.unlink(missing_ok=True)  # a previous run's, replaced by --overwrite
    return written


def _markdown(report: dict[str, object]) -> str:
    lines = [f"# {' and '.join(model['model'] for model in report['models'])} on {report['data']}", ""]
    for key, value in report.items():
        if key not in {"data", "models", "timings_s", "history"}:
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            lines.append(f"- {key.replace('_', ' ')}: {shown}")
    for model in report["models"]:
        lines += [
            "",
            f"## {model['model']} ({model['tag']}): accuracy {model['accuracy']:.1%} on {model['images']} images",
            "",
        ]
        lines += ["| class | precision | recall | images |", "|---|---|---|---|"]
        for name, row in model["per_class"].items():
            cells = [f"{row[key]:.1%}" if row[key] is not None else "-" for key in ("precision", "recall")]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} | {row['images']} |")
        labels, matrix = model["confusion"]["labels"], model["confusion"]["matrix"]
        lines += ["", "Confusion matrix (rows: true class, columns: predicted):", ""]
        lines += ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(map(str, row)) + " |" for name, row in zip(labels, matrix, strict=True)]
        pictures = picture_files([model["tag"]])[: 2 if model["misclassified"] else 1]
        lines += ["", f"Misclassified: {len(model['misclassified']) or 'none'} (pictures: {', '.join(pictures)})", ""]
        lines += [
            f"- {miss['image']}: {miss['true']} taken for {miss['predicted']} ({miss['score']:.2f})"
            for miss in model["misclassified"]
        ]
    if timings := report.get("timings_s"):
        lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items()]
    return "\n".join(lines) + "\n"


def summary_table(evaluations: Sequence[Evaluation]) -> Table:
    """Each model's accuracy and its precision and recall per class, for the console."""
    table = Table(title="held-out accuracy")
    for column in ("model", "accuracy", "class", "precision", "recall", "images"):
        table.add_column(column, justify="left" if column in {"model", "class"} else "right")
    for each in evaluations:
        for row, (name, scores) in enumerate(each.per_class().items()):
            cells = [f"{scores[key]:.1%}" if scores[key] is not None else "-" for key in ("precision", "recall")]
            first = (escape(f"{each.model} ({each.tag})"), f"{each.accuracy:.1%}") if row == 0 else ("", "")
            table.add_row(*first, escape(name), *cells, str(scores["images"]))
    return table


def build_parser() -> argparse.ArgumentParser:
    """The `mnstream evaluate` command line."""
    parser = Parser(
        prog="mnstream evaluate",
        description="Measure a classifier (.keras, .tflite, or a named MobileNet) on a folder of class folders: "
        "accuracy, per-class precision and recall, the confusion matrix and the images it gets wrong.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="PHOTOS", help="a folder with one folder of images per class")
    add_runtime_arguments(add_model_arguments(parser))
    parser.add_argument("--output", metavar="DIR", help="write the report and its pictures into this folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a report already in --output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: Sequence[str], *, console: Console | None = None) -> int:
    """Runs `mnstream evaluate` with the arguments after `evaluate`; returns the exit code.

    Returns:
        0 when the model was evaluated, 1 when it failed, 2 for bad usage, 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)

    def run_evaluation(stopping: Stopping) -> int:
        shown_on = console or CommandConsole()
        model_options = {key: value for key, value in vars(args).items() if key.startswith("model.")}
        config = config_from_flags(parser, model_options).model
        data = Path(args.data)
        if all((data / name).is_dir() for name in SPLIT_FOLDERS):
            data = data / "val"
        images, skipped = class_folders(data)
        classes = tuple(images)
        samples = [Sample(path, label) for label, paths in enumerate(images.values()) for path in paths]
        if not samples:
            raise UsageError(f"the class folders in {data} hold no images; add some")
        tag = Path(config.model).stem
        output = Path(args.output) if args.output else None
        if output is not None:
            files = [*REPORT_FILES, *picture_files([tag])]
            check_output_folder(output, files, overwrite=args.overwrite, data=Path(args.data))
        engine = create_engine(config)
        try:
            require_classes(engine, classes, data)
            chunks = Decoding(samples, engine.input_size)
            with Progress(console=shown_on, transient=True) as progress:
                task = progress.add_task(escape(f"evaluating {engine.name}"), total=len(samples))
                evaluation = evaluate(
                    engine, chunks, classes, tag=tag, on_batch=lambda count: progress.advance(task, count)
                )
        finally:
            engine.close()
        warn_skipped(data, [*skipped, *chunks.undecodable], chunks.huge)
        if not evaluation.images:
            raise UsageError(f"none of the images in {data} decodes; add images OpenCV can read")
        shown_on.print(summary_table([evaluation]))
        if output is not None:
            output.mkdir(exist_ok=True)
            written = write_report(output, [evaluation], data=data, about={"classes": list(classes)})
            shown_on.print(f"wrote {', '.join(str(path) for path in written)}", markup=False)
        return EXIT_OK

    return run_command(run_evaluation, debug=args.debug)
