"""`mnstream`: parse -> config -> a `stream.Run` -> exit code; the other commands (`SUBCOMMANDS`) are dispatched."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rich.console import Console

from stream.api import Run
from stream.arguments import (
    Parser,
    add_batching_arguments,
    add_engine_arguments,
    add_model_arguments,
    add_runtime_arguments,
    config_from_flags,
)
from stream.commands import (
    CommandConsole,
    Stopping,
    hold_standard_descriptors,
    logging_to_standard_error,
    run_command,
)
from stream.config import SMOOTHING_UNITS, WEB_FPS, StreamConfig
from stream.metrics import RunStats
from stream.sinks import summary_table
from stream.types import SourceInfo, SourceKind
from stream.videoformats import CONTAINERS, DEFAULT_SUFFIX, VIDEO_CODECS

SUBCOMMANDS = {
    "export": "stream.export",
    "bench": "stream.bench",
    "cache": "stream.cache",
    "serve": "stream.serving",
    "train": "stream.training",
    "evaluate": "stream.evaluation",
}

EPILOG = """\
examples:
  mnstream --camera 0                                        live window (q or Esc quits, space pauses)
  mnstream --source clip.mp4 --output annotated.mp4          annotated copy, every frame, source FPS
  mnstream --source rtsp://host/stream --headless            labels, FPS and latency on the console
  mnstream --source photo.jpg                                top-5 as (WordNet id, name, score)
  mnstream --source rtsp://host/stream --headless --web 8080 watch it at http://127.0.0.1:8080/
  mnstream --source clip.mp4 --model my_model.keras --labels labels.txt

  mnstream export --model mobilenet_v2 --int8 --calibration photos/ --output mobilenet_v2_int8.tflite
  mnstream bench --source clip.mp4 --model mobilenet_v2_int8.tflite   pipeline vs its ceiling and peers
  mnstream serve --replicas 2 & mnstream --source clip.mp4 --engine serve   inference shared on Ray Serve
  mnstream train photos/ --output my_model   your own classes, one folder each; then --model my_model/model_int8.tflite
  mnstream evaluate photos/ --model my_model/model_int8.tflite --output report   accuracy, confusion, misses
  mnstream cache --clear                                     delete the Keras models compiled to LiteRT

Options override the config file; configs/default.toml lists them all with their defaults.
See `mnstream COMMAND --help` for export, bench, cache, serve, train and evaluate.
Exit codes: 0 ok, 1 runtime failure, 2 bad usage, 129 hung up (terminal closed, SSH dropped),
130 interrupted (Ctrl-C), 141 output pipe closed, 143 terminated (SIGTERM). A hang-up or SIGTERM finishes the
run like Ctrl-C: the outputs are closed, playable, and the summary is printed.
"""


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
    """The `mnstream` command line; each flag's destination is the config key it overrides."""
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
    add_engine_arguments(model)
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
        help=f"write the annotated video ({', '.join(CONTAINERS)}), with a video file's audio; for several streams "
        "put {name} in it or give a folder",
    )
    output.add_argument(
        "--codec",
        dest="output.codec",
        choices=VIDEO_CODECS,
        help="the video codec of --output, in the extensions that hold it: "
        + "; ".join(
            f"{name} {' '.join(suffix for suffix, container in CONTAINERS.items() if name in container.codecs)}"
            for name in VIDEO_CODECS
        )
        + f" (default {CONTAINERS[DEFAULT_SUFFIX].codecs[0]}, but "
        + ", ".join(
            f"{container.codecs[0]} for {suffix}"
            for suffix, container in CONTAINERS.items()
            if container.codecs[0] != CONTAINERS[DEFAULT_SUFFIX].codecs[0]
        )
        + ")",
    )
    output.add_argument(
        "--crf",
        dest="output.crf",
        type=int,
        metavar="N",
        help="the codec's constant rate factor, lower is better and larger: "
        + ", ".join(
            f"{name} {codec.crf_range[0]}-{codec.crf_range[1]} ({codec.crf})"
            for name, codec in VIDEO_CODECS.items()
            if codec.crf is not None
        ),
    )
    output.add_argument(
        "--preset",
        dest="output.preset",
        metavar="NAME",
        help="the encoder's speed against the file's size: "
        + ", ".join(
            f"{name} {codec.presets[0]} ... {codec.presets[-1]} ({codec.preset})"
            for name, codec in VIDEO_CODECS.items()
            if codec.presets
        ),
    )
    output.add_argument(
        "--audio",
        dest="output.audio",
        action=argparse.BooleanOptionalAction,
        help="copy a video file's audio into --output, re-encoded only where the container cannot hold it (on); "
        "an .avi keeps none",
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
        "--web",
        dest="output.web",
        metavar="[HOST:]PORT",
        help="serve a live page of the run: every stream's annotated video, labels and numbers; on 127.0.0.1 unless "
        "a HOST is given, where it asks for a token (printed in a ready URL); needs `pip install 'mnstream[web]'`",
    )
    output.add_argument(
        "--web-fps",
        dest="output.web_fps",
        type=float,
        metavar="N",
        help=f"the most frames a second each stream sends to the page ({WEB_FPS:g})",
    )
    output.add_argument(
        "--web-token",
        dest="output.web_token",
        metavar="TOKEN",
        help="the token the page asks for, on any address (one is made up for any address but the loopback's)",
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


def main(argv: Sequence[str] | None = None, *, console: Console | None = None) -> int:
    """Runs the command line (`mnstream ...`, `mnstream export ...`, `mnstream bench ...`); returns the exit code."""
    hold_standard_descriptors()
    argv = list(sys.argv[1:] if argv is None else argv)
    with logging_to_standard_error():
        if argv and argv[0] in SUBCOMMANDS:
            # Imported on demand: export needs TensorFlow, bench its measuring kit; a plain run needs neither.
            return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:], console=console)
        return run(argv, console=console)


def run(argv: Sequence[str], *, console: Console | None = None) -> int:
    """Runs the pipeline as the command line asks; returns the exit code."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    debug = args.pop("debug", False)
    config_path = args.pop("config", None)

    def run_pipeline(stopping: Stopping) -> int:
        config = config_from_flags(parser, args, config_path)
        shown_on = console or CommandConsole()
        if config.output.jsonl == "-" and shown_on.file is sys.stdout:
            # Standard output is the JSON lines' own; progress and the summary move to standard error.
            shown_on = CommandConsole(stderr=True)
        run = Run.from_config(config, console=shown_on)

        def stop_once_open() -> bool:
            # While the sources open, a signal interrupts the opening itself: a stream URL may take seconds to answer.
            if not run.sources:
                return False
            run.stop()
            return True

        stopping.stop = stop_once_open
        try:
            run.run()
        finally:
            _print_summary(run.sources, run.stats, shown_on)
        return 0

    return run_command(run_pipeline, debug=debug)


def _print_summary(infos: list[SourceInfo], stats: RunStats, console: Console) -> None:
    # A summary of a run that never read a frame (the model did not load) would be a table of zeros.
    if stats.counters.read and infos[0].kind is not SourceKind.IMAGES:
        console.print(summary_table(infos, stats))


if __name__ == "__main__":
    sys.exit(main())
