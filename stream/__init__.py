"""mnstream: real-time video recognition with MobileNet, from the command line or from Python.

From Python, three ways in:

- `Run`: start a pipeline with `on_prediction` and `on_event` callbacks and the sinks you choose (a window, an
  annotated video, JSON lines), `stop` it from any thread, `join` it, read its `stats`.
- `frames`: a generator of `(Frame, Prediction)` for a camera, file, URL, folder of images or glob, in order.
- `Classifier`: the recognizer alone, on images you already have as numpy arrays.

Each takes the command line's options as keyword arguments (`model`, `top_k`, `threshold`, `allow`, `deny`,
`half_life`, `batch_size`, ...: the keys of configs/default.toml without their section) or a TOML file
(`config=`), and refuses a bad one with the same one-line `ConfigError`. Every error mnstream raises is an
`MnstreamError`; those that the caller can fix (a source, a model, an option) are `UsageError`s.

Importing the package loads neither TensorFlow nor LiteRT (nor OpenCV: each name loads on first use), changes no
environment variable, logging setting or signal handler, and nothing it runs prints: warnings go to the `stream`
logger.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_HOMES = {
    "Run": "stream.api",
    "frames": "stream.api",
    "Classifier": "stream.api",
    "Frame": "stream.types",
    "Prediction": "stream.types",
    "Label": "stream.types",
    "SourceInfo": "stream.types",
    "SourceKind": "stream.types",
    "MnstreamError": "stream.types",
    "UsageError": "stream.types",
    "ConfigError": "stream.types",
    "SourceError": "stream.types",
    "ModelError": "stream.types",
    "RunStats": "stream.metrics",
}
"""Each public name and the module it lives in, imported when the name is first used: `python -m stream` sets its
signal handlers before OpenCV and rich load, and a script that only needs the types loads none of them.
"""

__all__ = list(_HOMES)

if TYPE_CHECKING:
    from stream.api import Classifier as Classifier
    from stream.api import Run as Run
    from stream.api import frames as frames
    from stream.metrics import RunStats as RunStats
    from stream.types import ConfigError as ConfigError
    from stream.types import Frame as Frame
    from stream.types import Label as Label
    from stream.types import MnstreamError as MnstreamError
    from stream.types import ModelError as ModelError
    from stream.types import Prediction as Prediction
    from stream.types import SourceError as SourceError
    from stream.types import SourceInfo as SourceInfo
    from stream.types import SourceKind as SourceKind
    from stream.types import UsageError as UsageError


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
