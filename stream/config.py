"""Frozen run configuration: TOML file, then command-line overrides, validated once."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from stream.types import ConfigError
from stream.videoformats import CONTAINERS, choose_format, container_suffix
from stream.web.address import parse_web_address

KERAS_MODELS = ("mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
PREPROCESS_MODES = ("auto", "mobilenet", "raw", "unit")
RUNTIMES = ("litert", "tensorflow")
"""What runs a Keras model: LiteRT (compiled once to a float32 .tflite, cached) or TensorFlow's own kernels."""
SMOOTHING_UNITS = ("frames", "seconds")
ENGINES = ("local", "serve")
"""Where the model runs: in this process, or in the replicas of `mnstream serve` on a Ray cluster."""
WEB_FPS = 10.0


def _require(condition: bool, key: str, rule: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {rule}", key=key, rule=rule)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """One source: a camera index or a file, URL, folder or glob, with an optional name for display and files."""

    camera: int | None = None
    source: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        _require((self.camera is None) != (self.source is None), "input.streams", "each is a camera or a source")
        _require(self.camera is None or self.camera >= 0, "input.streams", "a camera is a device index >= 0")
        _require(self.source is None or self.source.strip() != "", "input.streams", "a source cannot be empty")


@dataclass(frozen=True, slots=True)
class InputConfig:
    """The streams to read, the frames queued for each, and how a lost live source is reconnected."""

    streams: tuple[StreamConfig, ...] = ()
    queue_size: int = 8
    reconnect_attempts: int = 5
    reconnect_delay_s: float = 1.0

    def __post_init__(self) -> None:
        _require(self.reconnect_attempts >= 0, "input.reconnect_attempts", "must be >= 0")
        _require(self.reconnect_delay_s >= 0, "input.reconnect_delay_s", "must be >= 0")
        _require(self.queue_size >= 1, "input.queue_size", "must be >= 1")
        names = [stream.name for stream in self.streams if stream.name]
        _require(len(names) == len(set(names)), "input.streams", "names must differ")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The model, its weights, input and labels, what runs it, and which of its labels are shown."""

    model: str = "mobilenet_v2"
    weights: str = "imagenet"
    alpha: float = 1.0
    input_size: int = 224
    labels: str | None = None
    preprocess: str = "auto"
    top_k: int = 5
    threshold: float = 0.0
    threads: int | None = None
    runtime: str = "litert"
    allow: tuple[str, ...] = ()
    """Only these classes (names or ids) are shown; see `stream.labels.class_mask`."""
    deny: tuple[str, ...] = ()
    engine: str = "local"
    address: str | None = None
    """The Ray cluster of `engine = "serve"`: auto (the one on this machine), HOST:PORT or ray://HOST:PORT."""

    def __post_init__(self) -> None:
        _require(self.engine in ENGINES, "model.engine", f"must be one of {', '.join(ENGINES)}")
        _require(
            self.address is None or self.engine == "serve", "model.address", "finds --engine serve's cluster; add it"
        )
        _require(not (self.allow and self.deny), "model", "--allow and --deny cannot be combined: choose one")
        _require(self.threads is None or self.threads >= 1, "model.threads", "must be >= 1")
        _require(self.alpha > 0, "model.alpha", "must be > 0")
        _require(self.input_size >= 32, "model.input_size", "must be >= 32 pixels")
        _require(
            self.preprocess in PREPROCESS_MODES, "model.preprocess", f"must be one of {', '.join(PREPROCESS_MODES)}"
        )
        _require(self.runtime in RUNTIMES, "model.runtime", f"must be one of {', '.join(RUNTIMES)}")
        _require(
            not (self.is_tflite and self.runtime == "tensorflow"),
            "model.runtime",
            "a .tflite model runs on LiteRT; drop --runtime tensorflow",
        )
        _require(self.top_k >= 1, "model.top_k", "must be >= 1")
        _require(0.0 <= self.threshold <= 1.0, "model.threshold", "must be between 0 and 1")
        _require(
            not self.is_tflite or self.weights == "imagenet",
            "model.weights",
            "a .tflite model carries its own weights; drop --weights",
        )
        # Only a named MobileNet is built at a width and size; a model file has its own.
        _require(
            self.is_named_keras_model or self.alpha == 1.0,
            "model.alpha",
            "sets the width of a named MobileNet; a model file has its own, drop --alpha",
        )
        _require(
            self.is_named_keras_model or self.input_size == 224,
            "model.input_size",
            "sets the input of a named MobileNet; a model file has its own, drop --input-size",
        )
        _require(
            self.threads is None or self.runtime == "litert",
            "model.threads",
            "sets LiteRT's threads; TensorFlow's kernels (--runtime tensorflow) use all cores, drop --threads",
        )

    @property
    def is_tflite(self) -> bool:
        return self.model.lower().endswith(".tflite")

    @property
    def is_named_keras_model(self) -> bool:
        return self.model in KERAS_MODELS

    @property
    def keras_input_range(self) -> str:
        """The `PIXEL_SCALES` mode a Keras model takes: --preprocess, else the named model's own, else [-1, 1]."""
        if self.preprocess != "auto":
            return self.preprocess
        # The MobileNetV3 applications scale 0..255 pixels themselves.
        return "raw" if self.is_named_keras_model and self.model.startswith("mobilenet_v3") else "mobilenet"


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """How many frames go into one model call, and how long a batch of a file's frames waits to fill."""

    batch_size: int = 8
    max_wait_ms: float = 20.0

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "batching.batch_size", "must be >= 1")
        _require(self.max_wait_ms >= 0, "batching.max_wait_ms", "must be >= 0")


@dataclass(frozen=True, slots=True)
class Smoothing:
    """How much a stream's labels are smoothed.

    The defaults follow a clean cut from one scene to another in about 0.6 s (the new class leads the old one by
    the margin after 1.15 half-lives), while a flicker of a few frames at 25 fps cannot move the shown label, nor
    can two near-tied classes (a photo of two pets) trade places frame after frame.
    """

    half_life: float = 0.5
    """Age at which a frame's weight in the average has halved; 0 turns smoothing and hysteresis off."""
    unit: str = "seconds"
    """`frames` or `seconds`. Seconds keep a stream as steady whatever its frame rate and its dropped frames."""
    margin: float = 0.1
    """How far (in absolute score) another class must lead the shown top-1 to replace it. At 0.1 the int8 models'
    score steps (1/256) and near ties never flip the label, yet a real change of scene overtakes within a half-life
    or two; a much larger margin would keep two classes that share the picture at 0.3-0.45 from ever swapping."""

    def __post_init__(self) -> None:
        _require(math.isfinite(self.half_life) and self.half_life >= 0, "smoothing.half_life", "must be a number >= 0")
        _require(self.unit in SMOOTHING_UNITS, "smoothing.unit", f"must be one of {', '.join(SMOOTHING_UNITS)}")
        _require(0 <= self.margin < 1, "smoothing.margin", "must be >= 0 and < 1")


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """Where annotated frames and predictions go: a video file, windows, JSON lines, the console."""

    path: str | None = None
    headless: bool = False
    window_per_stream: bool = False
    jsonl: str | None = None
    """One JSON object per inferred frame to this file, or to standard output with `-`."""
    events: bool = False
    """JSON lines only when a stream's smoothed top-1 changes."""
    log_interval_s: float = 1.0
    overwrite: bool = False
    """Replace an existing --output or --jsonl file; without it the run refuses to start."""
    codec: str | None = None
    """The video codec of --output; None for its extension's (`stream.videoformats.CONTAINERS`)."""
    crf: int | None = None
    """The codec's constant rate factor; None for its default."""
    preset: str | None = None
    """The codec's speed preset; None for its fastest."""
    audio: bool = True
    """Copy a video file's audio into --output."""
    web: str | None = None
    """`[HOST:]PORT` to serve the live page on (`stream.web`); the loopback address unless a host is given."""
    web_fps: float = WEB_FPS
    """The most frames a second each stream sends to the page."""
    web_token: str | None = None
    """The token the page asks for; one is generated where it listens on another address than the loopback."""

    def __post_init__(self) -> None:
        _require(self.log_interval_s > 0, "output.log_interval_s", "must be > 0")
        _require(self.jsonl is not None or not self.events, "output.events", "chooses what --jsonl writes; add --jsonl")
        for key, value in (("output.codec", self.codec), ("output.crf", self.crf), ("output.preset", self.preset)):
            _require(value is None or self.path is not None, key, "chooses how --output is written; add --output")
        # Refused here, before anything opens; an extension that is no video's is refused with the output checks.
        if self.path is not None and (suffix := container_suffix(self.path)) in CONTAINERS:
            choose_format(suffix, codec=self.codec, crf=self.crf, preset=self.preset)
        if self.web is not None:
            parse_web_address(self.web)
        _require(math.isfinite(self.web_fps) and 0 < self.web_fps <= 60, "output.web_fps", "must be > 0 and <= 60")
        _require(self.web_token is None or self.web_token.strip() != "", "output.web_token", "cannot be empty")
        for key, given in (
            ("output.web_fps", self.web_fps != WEB_FPS),
            ("output.web_token", self.web_token is not None),
        ):
            _require(self.web is not None or not given, key, "sets how --web serves the page; add --web")
        _require(
            not (self.headless and self.window_per_stream),
            "output.window_per_stream",
            "chooses the windows, and --headless opens none; drop one of them",
        )


@dataclass(frozen=True, slots=True)
class Config:
    """A whole run's configuration, one frozen section per TOML table."""

    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    smoothing: Smoothing = field(default_factory=Smoothing)
    output: OutputConfig = field(default_factory=OutputConfig)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, object] | None = None,
    *,
    defaults: dict[str, object] | None = None,
) -> Config:
    """Builds the run's config: defaults, then the TOML file, then the overrides.

    Args:
        path: A TOML file with the sections of `configs/default.toml`, or None for the defaults.
        overrides: Dotted keys (`"model.top_k"`) from the command line or the caller; they win over the file.
        defaults: Dotted keys that replace the built-in defaults, under the file (the Python API's own: no window).

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: The file cannot be read, or a key is unknown, or a value has the wrong type or range.
    """
    values = dict(defaults or {})
    values.update(_flatten(_read_toml(Path(path))) if path is not None else {})
    values.update(overrides or {})
    unknown = sorted(key for key in values if key.split(".", 1)[0] not in SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config key '{unknown[0]}' (sections: {', '.join(SECTIONS)})")
    sections = {}
    for section, cls in SECTIONS.items():
        prefix = f"{section}."
        given = {key.removeprefix(prefix): value for key, value in values.items() if key.startswith(prefix)}
        sections[section] = _build(cls, section, given)
    return Config(**sections)


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def _flatten(table: dict[str, object]) -> dict[str, object]:
    flat = {}
    for section, entries in table.items():
        if not isinstance(entries, dict):
            raise ConfigError(f"config key '{section}' must be a [section] (sections: {', '.join(SECTIONS)})")
        flat.update({f"{section}.{key}": value for key, value in entries.items()})
    return flat


def _build(cls: type, section: str, given: dict[str, object]) -> object:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key, value in given.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{section}.{key}' (known: {', '.join(sorted(known))})")
        given[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**given)


def _coerce(key: str, value: object, hint: object) -> object:
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if dataclasses.is_dataclass(item):
            return _coerce_tables(key, value, item)
        if isinstance(value, (list, tuple)) and all(isinstance(entry, item) for entry in value):
            return tuple(value)
        rule = f"expected a list of {item.__name__}, got {value!r}"
        raise ConfigError(f"{key}: {rule}", key=key, rule=rule)
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    concrete = tuple(t for t in allowed if t is not type(None))
    if value is None and len(concrete) < len(allowed):
        return None
    if isinstance(value, bool):
        # bool is an int to Python, but never a sensible count or size.
        matches = bool in concrete
    elif float in concrete and isinstance(value, int):
        return float(value)
    else:
        matches = isinstance(value, concrete)
    if matches:
        return value
    expected = " or ".join(t.__name__ for t in concrete)
    rule = f"expected {expected}, got {type(value).__name__} ({value!r})"
    raise ConfigError(f"{key}: {rule}", key=key, rule=rule)


def _coerce_tables(key: str, value: object, cls: type) -> tuple[object, ...]:
    """A TOML array of tables (`[[input.streams]]`) as dataclasses; ready ones (from the command line) pass."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of tables ([[{key}]]), got {type(value).__name__}")
    return tuple(
        item if isinstance(item, cls) else _build(cls, f"{key}[{index}]", dict(_table(key, item)))
        for index, item in enumerate(value)
    )


def _table(key: str, item: object) -> dict[str, object]:
    if not isinstance(item, dict):
        raise ConfigError(f"{key}: each entry is a table with camera or source, got {item!r}")
    return item
