"""The Engine protocol and the factory that picks one for a model; heavy imports stay in the engine modules."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from stream.config import ModelConfig
from stream.labels import ClassNames


class Engine(Protocol):
    """A classifier that turns a batch of RGB uint8 images into class probabilities."""

    name: str
    input_size: tuple[int, int]
    """(width, height) that `infer` expects."""
    classes: ClassNames

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Runs the model on an (N, height, width, 3) uint8 RGB batch; returns (N, classes) probabilities."""
        ...

    def close(self) -> None: ...


def create_engine(config: ModelConfig) -> Engine:
    """Loads the model that `config.model` names (a Keras MobileNet or a model file).

    Raises:
        ModelError: The model, its weights or its labels cannot be used.
    """
    from stream.engines.keras import KerasEngine

    return KerasEngine.from_config(config)
