"""Labelled images: one folder per class (or `train/` and `val/` holding them), split, decoded and augmented."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from stream.recognizer import model_input
from stream.sources import IMAGE_SUFFIXES, as_bgr8
from stream.types import SourceError, UsageError

log = logging.getLogger(__name__)

HUGE_PIXELS = 50_000_000
"""Images above this many pixels are decoded whole (OpenCV has no cheaper way to read them) and reported as slow."""
SPLIT_FOLDERS = ("train", "val")
"""A data folder holding these two, each with one folder per class, says which images to hold out itself."""


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One labelled image: its file and the index of its class."""

    path: Path
    label: int


@dataclasses.dataclass(frozen=True, slots=True)
class Split:
    """The classes in label order, the images to train on and those held out to measure the model on.

    Attributes:
        classes: Class names, the folders' names, sorted.
        train: The images the model learns from.
        val: The held-out images: early stopping and the report use these.
        held_out_by: How `val` was chosen, in words, for the report.
        skipped: Files in the class folders that are not images by their extension.
    """

    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    held_out_by: str
    skipped: tuple[Path, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Decoded:
    """Images decoded to the model's input: the samples that decoded, their pixels, and the files that did not."""

    samples: tuple[Sample, ...]
    images: np.ndarray
    """(N, height, width, 3) RGB uint8, N = len(samples) times the views per sample, in sample order."""
    undecodable: tuple[Path, ...]
    huge: tuple[Path, ...]


def class_folders(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """The image files of each class folder in `folder`, and the files there that are not images.

    Raises:
        UsageError: `folder` is missing, not a folder, or holds no class folders.
    """
    if not folder.exists():
        raise UsageError(f"{folder} does not exist; give a folder that holds one folder of images per class")
    if not folder.is_dir():
        raise UsageError(f"{folder} is a file; give a folder that holds one folder of images per class")
    classes = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not classes:
        raise UsageError(
            f"{folder} holds no class folders; put each class's images in a folder named after the class inside it"
        )
    images: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    for path in classes:
        # Hidden files (.DS_Store, editors' swap files) are nobody's training images, and not worth a warning.
        files = sorted(file for file in path.iterdir() if file.is_file() and not file.name.startswith("."))
        images[path.name] = [file for file in files if file.suffix.lower() in IMAGE_SUFFIXES]
        skipped += [file for file in files if file.suffix.lower() not in IMAGE_SUFFIXES]
    return images, skipped


def split_data(folder: Path, *, val_fraction: float, seed: int) -> Split:
    """The classes of `folder` and its images, split into training and held-out ones.

    A folder that holds `train/` and `val/` gives both sets itself; otherwise each class's images are shuffled
    with `seed` and `val_fraction` of them (at least one) held out, so both sets keep the classes' proportions.

    Raises:
        UsageError: No class folders, a single class, a class with fewer than two images, or a `val/` class
            that `train/` lacks.
    """
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-split {val_fraction} must be between 0 and 1, such as 0.2")
    if all((folder / name).is_dir() for name in SPLIT_FOLDERS):
        train, skipped = class_folders(folder / "train")
        val, skipped_val = class_folders(folder / "val")
        classes = _checked_classes(train, folder / "train", least=1)
        if unknown := sorted(set(val) - set(train)):
            raise UsageError(
                f"{folder / 'val'} has classes that {folder / 'train'} lacks: {', '.join(unknown)}; "
                "give both the same class folders"
            )
        return Split(
            classes,
            _samples(train, classes),
            _samples(val, classes),
            held_out_by=f"the images in {folder / 'val'}",
            skipped=(*skipped, *skipped_val),
        )
    images, skipped = class_folders(folder)
    classes = _checked_classes(images, folder, least=2)
    random = np.random.default_rng(seed)
    held_out: dict[str, list[Path]] = {}
    kept: dict[str, list[Path]] = {}
    for name, paths in images.items():
        order = random.permutation(len(paths))
        count = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
        held_out[name] = sorted(paths[i] for i in order[:count])
        kept[name] = sorted(paths[i] for i in order[count:])
    return Split(
        classes,
        _samples(kept, classes),
        _samples(held_out, classes),
        held_out_by=f"{val_fraction:.0%} of each class's images, chosen with seed {seed}",
        skipped=tuple(skipped),
    )


def _checked_classes(images: dict[str, list[Path]], folder: Path, *, least: int) -> tuple[str, ...]:
    if len(images) < 2:
        raise UsageError(
            f"{folder} has one class folder ({next(iter(images))}); a classifier needs two or more, one folder each"
        )
    for name, paths in images.items():
        if len(paths) < least:
            have = f"{len(paths)} image" + ("" if len(paths) == 1 else "s")
            raise UsageError(
                f"class {name} has {have} ({', '.join(sorted(IMAGE_SUFFIXES))}); each class needs at least {least}"
                + (", one to learn from and one to check on" if least == 2 else "")
                + f": add images to {folder / name}"
            )
    return tuple(images)


def _samples(images: dict[str, list[Path]], classes: Sequence[str]) -> tuple[Sample, ...]:
    return tuple(Sample(path, classes.index(name)) for name, paths in images.items() for path in paths)


def read_image(path: Path) -> np.ndarray | None:
    """The image as BGR uint8 as `mnstream --source` reads it (gray, alpha and 16 bits converted), or None when
    OpenCV cannot decode it.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    try:
        return as_bgr8(image)
    except SourceError:
        return None


def decode(
    samples: Sequence[Sample],
    size: tuple[int, int],
    *,
    views: int = 1,
    random: np.random.Generator | None = None,
) -> Decoded:
    """Decodes each sample once into the model's input: the whole image as the live pipeline sees it, then
    `views - 1` randomly augmented copies of it.

    Args:
        samples: The images to decode.
        size: The model's (width, height).
        views: Images per sample; the first is never augmented.
        random: Draws the augmentation; needed when `views` > 1.
    """
    if views > 1 and random is None:
        raise ValueError("augmented views need a random generator")
    kept, pixels, undecodable, huge = [], [], [], []
    for sample in samples:
        image = read_image(sample.path)
        if image is None:
            undecodable.append(sample.path)
            continue
        if image.shape[0] * image.shape[1] > HUGE_PIXELS:
            huge.append(sample.path)
        kept.append(sample)
        pixels.append(model_input(image, size))
        pixels += [augmented(image, size, random) for _ in range(views - 1)]
    images = np.stack(pixels) if pixels else np.zeros((0, size[1], size[0], 3), np.uint8)
    return Decoded(tuple(kept), images, tuple(undecodable), tuple(huge))


class Decoding:
    """Decodes samples (see `decode`) a chunk at a time, so that only one chunk's pixels are held, and remembers
    the files that did not decode and the huge ones, for one warning each at the end.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: tuple[int, int],
        *,
        views: int = 1,
        random: np.random.Generator | None = None,
        chunk: int = 32,
    ) -> None:
        self._samples, self._size, self._views, self._random, self._chunk = samples, size, views, random, chunk
        self.undecodable: list[Path] = []
        self.huge: list[Path] = []

    def __iter__(self) -> Iterator[Decoded]:
        for start in range(0, len(self._samples), self._chunk):
            decoded = decode(
                self._samples[start : start + self._chunk], self._size, views=self._views, random=self._random
            )
            self.undecodable += decoded.undecodable
            self.huge += decoded.huge
            yield decoded


def warn_skipped(root: Path, skipped: Sequence[Path], huge: Sequence[Path]) -> None:
    """Logs one warning listing the files skipped, one listing the huge images; names relative to `root`."""
    if skipped:
        log.warning(
            f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''} that OpenCV cannot decode or that "
            f"are not {'/'.join(sorted(IMAGE_SUFFIXES))} images: {listed(skipped, root)}"
        )
    if huge:
        log.warning(
            f"{len(huge)} image{'s' if len(huge) > 1 else ''} over {HUGE_PIXELS // 1_000_000} megapixels, slow to "
            f"decode and shrunk to the model's input: {listed(huge, root)}; smaller copies train as well"
        )


def augmented(image: np.ndarray, size: tuple[int, int], random: np.random.Generator) -> np.ndarray:
    """A random view of a BGR image as RGB model input: a crop of 50-100% of its area at a jittered aspect
    ratio, mirrored half the time, with its brightness and contrast changed by up to 20%.
    """
    height, width = image.shape[:2]
    area = random.uniform(0.5, 1.0) * height * width
    aspect = np.exp(random.uniform(np.log(3 / 4), np.log(4 / 3))) * width / height
    crop_width = int(min(width, max(1, round(np.sqrt(area * aspect)))))
    crop_height = int(min(height, max(1, round(np.sqrt(area / aspect)))))
    top = int(random.integers(0, height - crop_height + 1))
    left = int(random.integers(0, width - crop_width + 1))
    view = model_input(image[top : top + crop_height, left : left + crop_width], size)
    if random.random() < 0.5:
        view = view[:, ::-1]
    contrast, brightness = random.uniform(0.8, 1.2), random.uniform(-0.2, 0.2) * 255
    mean = view.mean()
    return np.clip((view - mean) * contrast + mean + brightness, 0, 255).astype(np.uint8)


def batches(images: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of `images` of `size` (the last may be shorter)."""
    for start in range(0, len(images), size):
        yield images[start : start + size]


def listed(paths: Sequence[Path], root: Path, *, most: int = 10) -> str:
    """Paths relative to `root`, comma-separated, the first `most` of them and how many more."""
    names = [str(path.relative_to(root)) if path.is_relative_to(root) else str(path) for path in paths]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more
