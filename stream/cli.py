"""`mnstream`: parse -> config -> pipeline.run() -> exit code."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import NoReturn

from rich.console import Console

from stream.config import (
    KERAS_MODELS,
    PREPROCESS_MODES,
    RUNTIMES,
    SMOOTHING_UNITS,
    Config,
    ConfigError,
    StreamConfig,
    load_config,
)
from stream.pipeline import Pipeline
from stream.sinks import summary_table
from stream.types import MnstreamError, SourceKind
from stream.videofile import VIDEO_CODECS
from stream.wiring import pipeline_from_config


def exit_code_of(signum: int) -> int:
    """The shell's code for a run ended by a signal: 128 + its number."""
    return 128 + signum


STOPPING_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
"""A closed terminal or dropped SSH session, Ctrl-C, and `kill`: each finishes the run cleanly."""
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_BROKEN_PIPE = 0, 1, 2, 141
EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED = (exit_code_of(signum) for signum in STOPPING_SIGNALS)
SUBCOMMANDS = {"export": "stream.export", "bench": "stream.bench", "cache": "stream.cache"}

EPILOG = """\
examples:
  mnstream --camera 0                                        live window (q or Esc quits, space pauses)
  mnstream --source clip.mp4 --output annotated.mp4          annotated copy, every frame, source FPS
  mnstream --source rtsp://host/stream --headless            labels, FPS and latency on the console
  mnstream --source photo.jpg                                top-5 as (WordNet id, name, score)
  mnstream --source clip.mp4 --model my_model.keras --labels labels.txt

  mnstream export --model mobilenet_v2 --int8 --calibration photos/ --output mobilenet_v2_int8.tflite
  mnstream bench --source clip.mp4 --model mobilenet_v2_int8.tflite   pipeline vs its ceiling and peers

Options override the config file; configs/default.toml lists them all with their defaults.
  mnstream cache --clear                                     delete the Keras models compiled to LiteRT

See `mnstream export --help`, `mnstream bench --help` and `mnstream cache --help` for those commands.
Exit codes: 0 ok, 1 runtime failure, 2 bad usage, 129 hung up (terminal closed, SSH dropped),
130 interrupted (Ctrl-C), 141 output pipe closed, 143 terminated (SIGTERM). A hang-up or SIGTERM finishes the
run like Ctrl-C: the outputs are closed, playable, and the summary is printed.
"""


class Terminated(KeyboardInterrupt):
    """A second SIGTERM or SIGHUP, handled like a second Ctrl-C: out at once, though the output is still closed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = exit_code_of(signum)


class _Signals:
    """The first stopping signal asks the pipeline to finish cleanly, so the summary counts exactly the frames in
    the output; a second one, or one that comes before the pipeline exists, interrupts at once."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.received: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.pipeline is None or self.received is not None:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)
        self.received = signum
        self.pipeline.stop()

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.received is None else exit_code_of(self.received)


class Parser(argparse.ArgumentParser):
    """Every mnstream command's parser: bad usage is one line, like every other mnstream error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


class _Extend(argparse.Action):
    """Collects names from repeated flags, each of which may hold several."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: object, *_: object
    ) -> None:
        setattr(namespace, self.dest, (*getattr(namespace, self.dest, ()), *value))


class _AppendStream(argparse.Action):
    """Collects --camera and --source in the order given, as one list of streams."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: object, *_: object
    ) -> None:
        streams = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, (*(streams if isinstance(streams, tuple) else ()), value))


def _camera(text: str) -> StreamConfig:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a camera index such as 0, got {text!r}")
    return StreamConfig(camera=int(text))


def _source(text: str) -> StreamConfig:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a video file, URL, image, folder or glob")
    return StreamConfig(source=text)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mnstream",
        description="Real-time video recognition with MobileNet: camera, video file, stream URL or images.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Only flags actually given override the config file.
        argument_default=argparse.SUPPRESS,
    )
    source = parser.add_argument_group("input (repeat --camera and --source for several streams)")
    source.add_argument(
        "--camera",
        dest="input.streams",
        type=_camera,
        action=_AppendStream,
        metavar="INDEX",
        help="OpenCV camera index, e.g. 0",
    )
    source.add_argument(
        "--source",
        dest="input.streams",
        type=_source,
        action=_AppendStream,
        metavar="PATH",
        help="video file, RTSP/HTTP URL, image, folder of images, or a quoted glob such as 'photos/*.jpg'",
    )

    model = add_model_arguments(parser)
    add_runtime_arguments(model)
    model.add_argument("--top-k", dest="model.top_k", type=int, metavar="K", help="labels shown per frame (5)")
    model.add_argument(
        "--threshold", dest="model.threshold", type=float, metavar="SCORE", help="hide labels scoring below this (0.0)"
    )
    model.add_argument(
        "--allow",
        dest="model.allow",
        type=_names,
        action=_Extend,
        metavar="NAMES",
        help="show only these classes: names or WordNet ids, comma-separated or repeated",
    )
    model.add_argument(
        "--deny", dest="model.deny", type=_names, action=_Extend, metavar="NAMES", help="never show these classes"
    )

    steady = parser.add_argument_group("smoothed labels (video; still images are never smoothed)")
    steady.add_argument(
        "--half-life",
        dest="smoothing.half_life",
        type=float,
        metavar="T",
        help="scores are averaged so that a frame's weight halves after T (0.5); 0 shows each frame's own top-1",
    )
    steady.add_argument(
        "--half-life-unit", dest="smoothing.unit", choices=SMOOTHING_UNITS, help="T in seconds or frames (seconds)"
    )
    steady.add_argument(
        "--margin",
        dest="smoothing.margin",
        type=float,
        metavar="SCORE",
        help="another class must lead the shown one by this much to replace it (0.1)",
    )
    add_batching_arguments(parser)

    live = parser.add_argument_group("live sources")
    live.add_argument(
        "--reconnect",
        dest="input.reconnect_attempts",
        type=int,
        metavar="N",
        help="reopen attempts each time a camera or stream is lost (5)",
    )
    live.add_argument(
        "--reconnect-delay",
        dest="input.reconnect_delay_s",
        type=float,
        metavar="SECONDS",
        help="delay before the first attempt, doubling each time up to 30 s (1.0)",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output",
        dest="output.path",
        metavar="FILE",
        help=f"write the annotated video ({', '.join(VIDEO_CODECS)}); for several streams put {{name}} in it or "
        "give a folder",
    )
    output.add_argument(
        "--jsonl",
        dest="output.jsonl",
        metavar="FILE|-",
        help="one JSON object per frame (schema: docs/jsonl.md), flushed line by line; - for standard output",
    )
    output.add_argument(
        "--overwrite",
        dest="output.overwrite",
        action=argparse.BooleanOptionalAction,
        help="replace an existing --output or --jsonl file; without it the run refuses to start rather than "
        "destroy one (a run unattended must not lose yesterday's file)",
    )
    output.add_argument(
        "--events",
        dest="output.events",
        action=argparse.BooleanOptionalAction,
        help="with --jsonl, only the frames where a stream's shown label changes",
    )
    output.add_argument(
        "--window-per-stream",
        dest="output.window_per_stream",
        action=argparse.BooleanOptionalAction,
        help="one window per stream instead of one window with a grid of them",
    )
    output.add_argument(
        "--headless",
        dest="output.headless",
        action=argparse.BooleanOptionalAction,
        help="no window (which plays a file at its own pace): process as fast as possible, log to the console",
    )
    output.add_argument(
        "--log-interval",
        dest="output.log_interval_s",
        type=float,
        metavar="SECONDS",
        help="console label log period (1.0)",
    )

    parser.add_argument("--config", metavar="FILE", help="TOML config; flags given here override it")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def add_model_arguments(parser: argparse.ArgumentParser, *, tflite: bool = True) -> argparse._ArgumentGroup:
    """The flags that choose and load a model, shared by every command; each sets a `model.*` config key.

    Args:
        parser: The command's parser.
        tflite: Whether the command runs .tflite models too (export converts Keras models only).

    Returns:
        The group, for a command's own model flags.
    """
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        dest="model.model",
        metavar="NAME|FILE",
        help=f"{' | '.join(KERAS_MODELS)} (default mobilenet_v2), or your own "
        f"{'.keras/.h5/.tflite' if tflite else '.keras/.h5'} classifier",
    )
    model.add_argument(
        "--weights",
        default=argparse.SUPPRESS,
        dest="model.weights",
        metavar="imagenet|none|FILE",
        help="imagenet: Keras' download, cached under $KERAS_HOME (default); none: random; or a weights file",
    )
    model.add_argument(
        "--alpha",
        default=argparse.SUPPRESS,
        dest="model.alpha",
        type=float,
        metavar="ALPHA",
        help="width multiplier of a named MobileNet (1.0)",
    )
    model.add_argument(
        "--input-size",
        default=argparse.SUPPRESS,
        dest="model.input_size",
        type=int,
        metavar="PIXELS",
        help="square input of a named MobileNet (224)",
    )
    model.add_argument(
        "--labels",
        default=argparse.SUPPRESS,
        dest="model.labels",
        metavar="FILE",
        help="one class name per line, for your own model (ImageNet)",
    )
    model.add_argument(
        "--preprocess",
        default=argparse.SUPPRESS,
        dest="model.preprocess",
        choices=PREPROCESS_MODES,
        help="the pixel range the model was trained on: mobilenet [-1,1], unit [0,1], raw [0,255]; auto: the named "
        "model's own, mobilenet for a file (auto)",
    )
    return model


def add_runtime_arguments(group: argparse._ArgumentGroup) -> None:
    """The flags that choose what runs the model, for the commands that run one."""
    group.add_argument(
        "--runtime",
        default=argparse.SUPPRESS,
        dest="model.runtime",
        choices=RUNTIMES,
        help="what runs a Keras model: litert compiles it once to a float32 .tflite, cached (see `mnstream cache "
        "--help`), and runs it on XNNPACK; tensorflow runs TensorFlow's kernels (litert)",
    )
    group.add_argument(
        "--threads",
        default=argparse.SUPPRESS,
        dest="model.threads",
        type=int,
        metavar="N",
        help="LiteRT threads (all cores)",
    )


def add_batching_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that shape the batches and the queue before them; each sets a config key."""
    batching = parser.add_argument_group("batching")
    batching.add_argument(
        "--batch-size",
        default=argparse.SUPPRESS,
        dest="batching.batch_size",
        type=int,
        metavar="N",
        help="frames per model call (8)",
    )
    batching.add_argument(
        "--max-wait-ms",
        default=argparse.SUPPRESS,
        dest="batching.max_wait_ms",
        type=float,
        metavar="MS",
        help="longest wait to fill a batch after its first frame, for files; live sources never wait (20)",
    )
    batching.add_argument(
        "--queue-size",
        default=argparse.SUPPRESS,
        dest="input.queue_size",
        type=int,
        metavar="N",
        help="frames buffered before inference (8)",
    )


def main(argv: Sequence[str] | None = None, *, console: Console | None = None) -> int:
    """Runs the command line (`mnstream ...`, `mnstream export ...`, `mnstream bench ...`); returns the exit code."""
    _hold_standard_descriptors()
    argv = list(sys.argv[1:] if argv is None else argv)
    with _logging_to_standard_error():
        if argv and argv[0] in SUBCOMMANDS:
            # Imported on demand: export needs TensorFlow, bench its measuring kit; a plain run needs neither.
            return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:], console=console)
        return run(argv, console=console)


class CommandConsole(Console):
    """The console of mnstream's commands: as wide as a log file needs, and quiet when its reader goes away."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        if not self.is_terminal and "COLUMNS" not in os.environ:
            # A log file has no right edge; 80 columns would cut stream names and numbers out of the tables.
            self.width = 160

    def on_broken_pipe(self) -> None:
        # rich's own answer is SystemExit(1) from whichever thread was writing; raising the error instead lets
        # the run end through its shutdown, which closes the outputs, and `run` reports it as a closed pipe.
        self.quiet = True
        raise BrokenPipeError


def _hold_standard_descriptors() -> None:
    """Puts /dev/null on standard input, output or error where the caller closed them (`2>&-`): a file opened
    later would take the free number, and native code writing to standard error would write into our output."""
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number, which is this one


def config_from_flags(parser: argparse.ArgumentParser, flags: dict[str, object], path: str | None = None) -> Config:
    """The config that a command's flags (dotted config keys, as `dest`) and its config file give.

    Raises:
        ConfigError: As `load_config`, naming the flag where the user gave one rather than its config key.
    """
    try:
        return load_config(path, overrides=flags)
    except ConfigError as error:
        given = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
        if error.key in flags and error.key in given:
            raise error.naming(given[error.key]) from None
        raise


def run(argv: Sequence[str], *, console: Console | None = None) -> int:
    """Runs the pipeline as the command line asks; returns the exit code."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    console = console or CommandConsole()
    debug = args.pop("debug", False)
    config_path = args.pop("config", None)
    # Ctrl-C too, because a shell that starts us in the background has it ignored, and an interrupt must still
    # finalise the output file and print the summary.
    signals = _Signals()
    previous = {signum: signal.signal(signum, signals) for signum in STOPPING_SIGNALS}
    pipeline: Pipeline | None = None
    try:
        config = config_from_flags(parser, args, config_path)
        if config.output.jsonl == "-" and console.file is sys.stdout:
            # Standard output is the JSON lines' own; progress and the summary move to standard error.
            console = CommandConsole(stderr=True)
        pipeline = signals.pipeline = pipeline_from_config(config, console=console)
        pipeline.run()
        return signals.exit_code
    except Terminated as terminated:
        return terminated.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        if BrokenPipeError in (type(error), type(error.__cause__)):
            # Whatever read our standard output has gone (`| head`): stop quietly, as command-line tools do, and
            # let the summary and Python's last flush go nowhere instead of failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        return report_error(error, debug=debug)
    finally:
        try:
            # A summary of a run that never read a frame (the model did not load) would be a table of zeros.
            if pipeline is not None and pipeline.stats.counters.read:
                infos = [reader.info for reader in pipeline.readers]
                if infos[0].kind is not SourceKind.IMAGES:
                    console.print(summary_table(infos, pipeline.stats))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def report_error(error: Exception, *, debug: bool) -> int:
    """Prints the one-line message every mnstream command ends with (after the traceback, with --debug).

    Returns:
        The exit code: the error's own for mnstream's errors (2 for bad usage), 1 for anything unexpected.
    """
    if debug:
        traceback.print_exception(error)
    code = error.exit_code if isinstance(error, MnstreamError) else EXIT_FAILURE
    message = str(error) if isinstance(error, MnstreamError) else f"{type(error).__name__}: {error}"
    print(f"mnstream: error: {message}", file=sys.stderr)
    return code


class _LinesOnStandardError(logging.Handler):
    """The stages' warnings (a camera lost and found again, a skipped image) as plain lines on standard error,
    apart from the results on standard output.

    Each goes to whatever `sys.stderr` is when it comes, so that rich's live progress bar, which stands in for it
    while it runs on a terminal, prints the line above itself.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
            print(f"mnstream: {level}{record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _logging_to_standard_error() -> Iterator[None]:
    """Routes the `stream` loggers to `_LinesOnStandardError` for one command, then puts back what was there."""
    logger = logging.getLogger("stream")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [_LinesOnStandardError()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


if __name__ == "__main__":
    sys.exit(main())
