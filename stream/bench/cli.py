"""`mnstream bench`: parse, run each row in its own process one after another, then print, save and plot."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from stream.arguments import (
    Parser,
    add_batching_arguments,
    add_model_arguments,
    add_runtime_arguments,
    config_from_flags,
)
from stream.bench import report
from stream.bench.results import ROWS, TITLES, ModelFormat, RowResult, RowStatus, failed, median_run
from stream.commands import CommandConsole, run_command
from stream.config import Config, StreamConfig
from stream.outputs import check_writable
from stream.sources import open_reader
from stream.types import MnstreamError, UsageError

ROW_TIMEOUT_S = 900.0
"""Longest a row may take besides the live run's own duration: a row past it is stuck, not slow."""

EPILOG = """\
rows (each in a fresh process, so start-up and memory are its own):
  ceiling    the engine alone: batched inference on frames decoded and resized beforehand (a Keras model:
             compiled to a float32 .tflite on LiteRT, unless --runtime tensorflow)
  float16    the ceiling of the same Keras model exported with float16 weights
  int8       ... exported as int8, calibrated on the video's first 100 frames; both say how often their top-1
             is float32's, and the benchmark says which of the three to use on this machine
  tensorflow the pipeline headless with the Keras model on TensorFlow's kernels (--runtime tensorflow)
  baseline   a first script: read, resize, Keras predict() per frame, top-5, draw (Keras models only)
  headless   the pipeline from its config, no output
  video      the pipeline writing the annotated video
  cold       the pipeline headless on an empty model cache: a Keras model's first run, converting it to LiteRT
  mediapipe  MediaPipe's ImageClassifier in VIDEO mode on the same .tflite (when mediapipe is installed)
  live       the pipeline on the video replayed at --live-fps for --live-seconds: capture-to-display latency

examples:
  mnstream bench --source clip.mp4 --model mobilenet_v2 --json bench.json
  mnstream bench --source clip.mp4 --model model_quant.tflite --frames 300 --plot bench.png
"""


def build_parser() -> argparse.ArgumentParser:
    """The `mnstream bench` command line."""
    parser = Parser(
        prog="mnstream bench",
        description="Measure mnstream against its engine's ceiling, a naive first script and MediaPipe.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Dotted destinations are config overrides: only the flags actually given override the config file.
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--source", required=True, metavar="VIDEO", help="the video file every row reads")
    add_runtime_arguments(add_model_arguments(parser))
    add_batching_arguments(parser)
    parser.add_argument("--config", default=None, metavar="FILE", help="TOML config; flags given here override it")
    parser.add_argument(
        "--frames", type=_positive(int), default=None, metavar="N", help="frames each file row reads (all)"
    )
    parser.add_argument(
        "--live-seconds", type=_positive(float), default=20.0, metavar="S", help="length of the live run (20)"
    )
    parser.add_argument(
        "--live-fps", type=_positive(float), default=30.0, metavar="FPS", help="pace of the live run (30)"
    )
    parser.add_argument(
        "--repeat",
        type=_positive(int),
        default=1,
        metavar="N",
        help="run every row N times, taking turns, and report each row's median run: this machine is shared (1)",
    )
    parser.add_argument(
        "--rows", type=_row_list, default=ROWS, metavar="ROW,...", help=f"rows to run ({','.join(ROWS)})"
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write every number to this JSON file")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="draw the comparison (needs matplotlib)")
    parser.add_argument(
        "--overwrite", action="store_true", default=False, help="replace existing --json and --plot files"
    )
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks")
    # Set by the parent for the process that measures one row.
    parser.add_argument("--child-row", default=None, choices=ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, default=None, help=argparse.SUPPRESS)
    return parser


def _positive(kind: type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def _row_list(text: str) -> tuple[str, ...]:
    rows = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in rows if name not in ROWS]
    if unknown or not rows:
        raise argparse.ArgumentTypeError(f"unknown row {unknown[0] if unknown else text!r}; rows: {', '.join(ROWS)}")
    return rows


def main(argv: Sequence[str], *, console: Console | None = None) -> int:
    """Runs the benchmark (or, with the hidden --child-row, one row of it); returns the exit code.

    Exit codes: 0 every row measured or skipped with a reason, 1 a row failed, 2 bad usage. Targets that are
    missed do not change it: they are measurements, shown as FAIL in the table and the JSON.
    """
    argv = [str(arg) for arg in argv]
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    return run_command(lambda stopping: _bench(parser, args, argv, console or CommandConsole()), debug=args["debug"])


def _bench(parser: argparse.ArgumentParser, args: dict[str, object], argv: Sequence[str], console: Console) -> int:
    config = _bench_config(parser, args)
    if args["child_row"] is not None:
        return _measure_here(args, config)
    if args["plot"] and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install matplotlib")
    # The results are written after minutes of measuring: a path that cannot take them fails now.
    for option in ("json", "plot"):
        if args[option]:
            check_writable(args[option], option=f"--{option}", overwrite=args["overwrite"])
    _warn_if_too_few_frames(config.input.streams[0], args["frames"])
    rows = _run_rows(args["rows"], argv, console, repeat=args["repeat"], timeout_s=ROW_TIMEOUT_S + args["live_seconds"])
    found = report.checks(rows, ModelFormat.of(config.model))
    title = _title(config, args["frames"])
    console.print(report.tables(rows, found, title=title))
    if args["json"]:
        document = report.document(rows, found, setup=_setup(args, config))
        Path(args["json"]).write_text(json.dumps(document, indent=2) + "\n")
    if args["plot"]:
        report.plot(rows, Path(args["plot"]), title=title)
    return MnstreamError.exit_code if any(row.status is RowStatus.FAILED for row in rows.values()) else 0


def _setup(args: dict[str, object], config: Config) -> dict[str, object]:
    """What was measured how, for the JSON: the benchmark's own options and the whole config the rows ran."""
    options = {key: args[key] for key in ("source", "frames", "live_seconds", "live_fps", "repeat")}
    return {**options, "config": dataclasses.asdict(config)}


MIN_FRAMES_TO_MEASURE = 300
"""Below this, start-up, warm-up and the first batches weigh more than the steady rate being compared."""


def _warn_if_too_few_frames(source: StreamConfig, frames: int | None) -> None:
    reader = open_reader(source)
    available = reader.info.frame_count
    reader.close()
    measured = min(frames or available or 0, available or frames or 0)
    if measured < MIN_FRAMES_TO_MEASURE:
        print(
            f"mnstream bench: warning: the file rows read {measured} frames, too few to measure a steady rate; "
            f"read as indications only the ratios and verdicts below (use {MIN_FRAMES_TO_MEASURE} or more)",
            file=sys.stderr,
        )


def _bench_config(parser: argparse.ArgumentParser, args: dict[str, object]) -> Config:
    """The config every row runs: the video, the model and batching flags, headless, no output of its own.

    Raises:
        UsageError: The source is not a file, or the config is invalid.
    """
    source = str(args["source"])
    if not Path(source).is_file():
        raise UsageError(f"--source {source} is not a file; the benchmark reads a video file")
    overrides = {key: value for key, value in args.items() if "." in key}
    overrides.update({"input.streams": (StreamConfig(source=source),), "output.path": None, "output.headless": True})
    return config_from_flags(parser, overrides, args["config"])


def _measure_here(args: dict[str, object], config: Config) -> int:
    """The child's side: measures one row and prints it as one JSON line."""
    # Imported here: the parent needs none of the measuring code.
    from stream.bench.instruments import SpawnClock
    from stream.bench.rows import RowOptions, measure

    spawned_at = args["spawned_at"]
    options = RowOptions(
        frames=args["frames"],
        clock=SpawnClock(time.time() if spawned_at is None else spawned_at),
        live_s=args["live_seconds"],
        live_fps=args["live_fps"],
    )
    result = measure(str(args["child_row"]), config, options)
    print(json.dumps(result.to_dict()), flush=True)
    return 0


def _run_rows(
    rows: Sequence[str], argv: Sequence[str], console: Console, *, repeat: int, timeout_s: float
) -> dict[str, RowResult]:
    """Each row in a fresh interpreter, one after another: concurrent rows would share the cores they measure.

    Repeats take turns (all rows, then all rows again), so a slow spell of a shared machine hits every row alike.
    """
    runs: dict[str, list[RowResult]] = {row: [] for row in rows}
    for round_number in range(1, repeat + 1):
        for row in rows:
            with console.status(f"measuring {TITLES[row]} ({round_number} of {repeat})"):
                runs[row].append(_run_row(row, argv, timeout_s=timeout_s))
            console.print(_progress_line(runs[row][-1]), highlight=False)
    return {row: median_run(results) for row, results in runs.items()}


def _run_row(row: str, argv: Sequence[str], *, timeout_s: float) -> RowResult:
    spawned_at = time.time()
    command = [sys.executable, "-m", "stream.bench", *argv, "--child-row", row, "--spawned-at", repr(spawned_at)]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return failed(row, f"no result within {timeout_s:.0f} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        errors = done.stderr.strip().splitlines()
        return failed(row, errors[-1] if errors else f"exit code {done.returncode} and no result")
    return RowResult.from_dict(json.loads(lines[-1]))


def _progress_line(result: RowResult) -> str:
    title = TITLES[result.row]
    if result.status is RowStatus.FAILED:
        return f"[bold red]{title} failed[/]: {result.reason}"
    if result.status is RowStatus.SKIPPED:
        return f"[yellow]{title} skipped[/]: {result.reason}"
    first = f", first frame {result.first_frame_s:.2f} s" if result.first_frame_s is not None else ""
    return f"{title}: {result.frames_per_s or 0:.1f} frames/s{first}, peak {result.peak_rss_mb or 0:.0f} MB"


def _title(config: Config, frames: int | None) -> str:
    model = config.model
    name = Path(model.model).name if ModelFormat.of(model) is ModelFormat.TFLITE else model.model
    cpu = report.machine()
    return (
        f"mnstream bench: {Path(str(config.input.streams[0].source)).name}, {name}, batch {config.batching.batch_size}, "
        f"{frames if frames is not None else 'all'} frames; {cpu.get('cpu')}, {cpu['cpus']} CPUs, "
        f"{' '.join(cpu.get('vector_flags', []))}"
    )
