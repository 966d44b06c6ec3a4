"""The flags the commands share, the parser they all use, and the config their flags give."""

from __future__ import annotations

import argparse
from typing import NoReturn

from stream.commands import EXIT_USAGE
from stream.config import ENGINES, KERAS_MODELS, PREPROCESS_MODES, RUNTIMES, Config, ConfigError, load_config


class Parser(argparse.ArgumentParser):
    """Every mnstream command's parser: bad usage is one line, like every other mnstream error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def add_engine_arguments(group: argparse._ArgumentGroup) -> None:
    """The flags that send a run's frames to the model `mnstream serve` deployed on a Ray cluster."""
    group.add_argument(
        "--engine",
        default=argparse.SUPPRESS,
        dest="model.engine",
        choices=ENGINES,
        help="where the model runs: local, in this process, or serve, in the replicas of `mnstream serve` on a Ray "
        "cluster, whose model, labels and threads are used (local)",
    )
    group.add_argument(
        "--address",
        default=argparse.SUPPRESS,
        dest="model.address",
        metavar="auto|HOST:PORT",
        help="the Ray cluster of --engine serve: auto, the one on this machine, or its head's address (auto)",
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


def config_from_flags(
    parser: argparse.ArgumentParser,
    flags: dict[str, object],
    path: str | None = None,
    *,
    defaults: dict[str, object] | None = None,
) -> Config:
    """The config that a command's flags (dotted config keys, as `dest`) and its config file give, over the
    command's own `defaults` where it has any.

    Raises:
        ConfigError: As `load_config`, naming the flag where the user gave one rather than its config key.
    """
    try:
        return load_config(path, overrides=flags, defaults=defaults)
    except ConfigError as error:
        given = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
        if error.key in flags and error.key in given:
            raise error.naming(given[error.key]) from None
        raise
