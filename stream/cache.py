"""The model cache: Keras models compiled once to LiteRT, keyed by what determines them, and `mnstream cache`."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from stream import __version__
from stream.arguments import Parser
from stream.commands import EXIT_OK, CommandConsole
from stream.config import ModelConfig
from stream.engines import tensorflow_installed

log = logging.getLogger(__name__)

CACHE_ENV = "MNSTREAM_CACHE"
"""Names the cache folder, overriding `$XDG_CACHE_HOME/mnstream` (default `~/.cache/mnstream`)."""
SUFFIX = ".tflite"
_TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tf-nightly")
"""The wheels that install the `tensorflow` module: its version is the converter's."""


def cache_dir() -> Path:
    """The folder compiled models are kept in; deleting it is always safe."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mnstream"


@dataclass(frozen=True, slots=True)
class CompiledModelKey:
    """Everything that determines a compiled model's bytes, found without importing TensorFlow.

    Files count by content (sha256), so a retrained model saved over the same path is compiled again.
    """

    model: str
    """The named MobileNet, or the content hash of the user's .keras/.h5 file."""
    weights: str
    """The content hash of the weights file Keras loads into a named MobileNet; empty for a model file."""
    alpha: float
    input_size: int
    input_range: str
    """The `PIXEL_SCALES` mode the Keras model takes; the compiled one always takes [-1, 1]."""
    labels: str
    """The content hash of --labels, or `imagenet`: the class names travel inside the compiled model."""
    precision: str
    wrapper: str
    """mnstream's version, which wraps the model (input range, class names)."""
    converter: str | None
    """TensorFlow's and Keras' versions, which convert it; None where TensorFlow cannot be imported, so nothing
    can be converted and a model compiled by any version will do."""

    @classmethod
    def of(cls, config: ModelConfig, *, precision: str = "float32") -> CompiledModelKey | None:
        """The key of the Keras model `config` names; None when there is none yet.

        A named MobileNet's ImageNet weights are found where Keras keeps them; before Keras has downloaded them
        there is nothing to hash, and a run with `--weights none` (random weights) has nothing worth keeping.
        """
        if config.is_named_keras_model:
            weights = _imagenet_weights_file(config) if config.weights == "imagenet" else Path(config.weights)
            if config.weights == "none" or not weights.is_file():
                return None
            model, weights_hash = config.model, _content_hash(weights)
            alpha, input_size = config.alpha, config.input_size
        else:
            model, weights_hash, alpha, input_size = _content_hash(Path(config.model)), "", 0.0, 0
        return cls(
            model=model,
            weights=weights_hash,
            alpha=alpha,
            input_size=input_size,
            input_range=config.keras_input_range,
            labels=_content_hash(Path(config.labels)) if config.labels else "imagenet",
            precision=precision,
            wrapper=__version__,
            converter=f"{_tensorflow_version()}, keras {_version_of('keras')}" if tensorflow_installed() else None,
        )

    def file_name(self, name: str) -> str:
        """`name` (the model's, for people looking in the folder), the digest of the model, then the converter's.

        Raises:
            ValueError: The key has no converter: there is nothing to convert with, so nothing to store.
        """
        if self.converter is None:
            raise ValueError("a compiled model is stored under its converter's version")
        return f"{self.model_prefix(name)}{_digest(self.converter)}{SUFFIX}"

    def model_prefix(self, name: str) -> str:
        """What every entry of this model starts with, whichever converter compiled it."""
        model = json.dumps({**dataclasses.asdict(self), "converter": None}, sort_keys=True)
        return f"{Path(name).stem}-{self.precision}-{_digest(model)}-"


def entries(key: CompiledModelKey, name: str) -> list[Path]:
    """The compiled models stored under `key`, newest first.

    That is the one its converter made, or, where there is no converter (TensorFlow is not installed), what any
    version made of the same model: a machine that only runs cached models should not need TensorFlow to find
    them.
    """
    folder = cache_dir()
    if key.converter is not None:
        path = folder / key.file_name(name)
        return [path] if path.is_file() else []
    pattern = f"{glob.escape(key.model_prefix(name))}*{SUFFIX}"
    found = []
    for path in folder.glob(pattern) if folder.is_dir() else []:
        with contextlib.suppress(OSError):  # deleted meanwhile
            found.append((path.stat().st_mtime, path))
    return [path for _, path in sorted(found, reverse=True)]


def store(key: CompiledModelKey, name: str, model: bytes) -> Path | None:
    """Keeps `model` under `key`; None, with a warning, when the cache cannot be written.

    The bytes go to a temporary file in the same folder, renamed over the entry in one step: two runs converting
    at once each rename a whole file, and a reader sees the old entry or a new one, never part of one.
    """
    folder = cache_dir()
    temporary: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".", suffix=".partial", delete=False) as file:
            temporary = file.name
            file.write(model)
        path = folder / key.file_name(name)
        os.replace(temporary, path)
        return path
    except OSError as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        log.warning(
            f"cannot write the model cache {folder} ({error.strerror or error}); running without it, so the next "
            f"run converts {name} again (set {CACHE_ENV} to a writable folder)"
        )
        return None


def clear() -> tuple[int, int]:
    """Deletes every compiled model (and any temporary file a killed run left); returns (files, bytes)."""
    folder = cache_dir()
    files = [path for path in folder.glob("*") if path.is_file()] if folder.is_dir() else []
    size = sum(path.stat().st_size for path in files)
    for path in files:
        path.unlink(missing_ok=True)
    return len(files), size


def _imagenet_weights_file(config: ModelConfig) -> Path:
    """Where Keras keeps the ImageNet weights of a named MobileNet, named as its applications name them."""
    alpha, size = config.alpha, config.input_size
    if config.model == "mobilenet":
        # Keras loads its 224 weights for any other size; an unsupported alpha is refused before loading.
        rows = size if size in (128, 160, 192, 224) else 224
        width = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0"}.get(alpha, "2_5")
        name = f"mobilenet_{width}_{rows}_tf.h5"
    elif config.model == "mobilenet_v2":
        rows = size if size in (96, 128, 160, 192, 224) else 224
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}.h5"
    else:
        name = f"weights_mobilenet_v3_{config.model.removeprefix('mobilenet_v3_')}_224_{alpha}_float.h5"
    return _keras_home() / "models" / name


def _keras_home() -> Path:
    """Keras' cache folder: `$KERAS_HOME`, else `~/.keras`; `/tmp/.keras` where that is not writable."""
    home = os.environ.get("KERAS_HOME") or os.path.join(
        "~" if os.access(os.path.expanduser("~"), os.W_OK) else "/tmp", ".keras"
    )
    home = os.path.expanduser(home)
    return Path(home if os.access(home, os.W_OK) else "/tmp/.keras")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _tensorflow_version() -> str:
    for distribution in _TENSORFLOW_DISTRIBUTIONS:
        try:
            return f"{distribution} {importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "no tensorflow"


def main(argv: Sequence[str], *, console: Console | None = None) -> int:
    """Runs `mnstream cache` with the arguments after `cache`; returns the exit code (0)."""
    parser = Parser(
        prog="mnstream cache",
        description="Where mnstream keeps Keras models compiled to LiteRT, and how to empty it. A run compiles "
        "a Keras model once and loads the compiled one on later runs, without TensorFlow.",
        epilog=f"The folder is ${CACHE_ENV}, else $XDG_CACHE_HOME/mnstream, else ~/.cache/mnstream; deleting it "
        "by hand is safe too.",
    )
    parser.add_argument("--clear", action="store_true", help="delete every compiled model")
    args = parser.parse_args(argv)
    console = console or CommandConsole()
    folder = cache_dir()
    if args.clear:
        files, size = clear()
        console.print(f"deleted {files} files ({size / 1e6:.1f} MB) from {folder}", highlight=False)
    else:
        models = sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
        console.print(f"{folder}: {len(models)} compiled models", highlight=False)
        for path in models:
            console.print(f"  {path.name} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False)
    return EXIT_OK
