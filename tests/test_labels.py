"""Class names: ImageNet offline with WordNet ids as Keras names them, users' labels files, filters, top-k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream.labels import ClassNames, class_mask, imagenet_classes, imagenet_index, read_labels_file, top_labels
from stream.types import ModelError, UsageError


@pytest.mark.parametrize(
    ("index", "wnid", "name"),
    [
        (0, "n01440764", "tench"),
        (285, "n02124075", "Egyptian_cat"),
        (323, "n02279972", "monarch"),
        (652, "n03763968", "military_uniform"),
        (934, "n07697537", "hotdog"),
        (999, "n15075141", "toilet_tissue"),
    ],
)
def test_imagenet_names_are_keras_names(index: int, wnid: str, name: str) -> None:
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert (classes.ids[index], classes.names[index]) == (wnid, name)


def test_imagenet_names_follow_the_shared_label_file(assets: Path) -> None:
    # the shared file has one extra leading 'background' and full synonym lists; Keras keeps the first synonym
    lines = (assets / "models/tflite/imagenet_labels.txt").read_text().splitlines()
    assert lines[0] == "background"
    keras_style = [line.split(",")[0].replace(" ", "_") for line in lines[1:]]
    assert list(imagenet_classes().names) == keras_style


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("ants", "ant"),
        ("Bees", "bee"),
        ("golden-retriever", "golden_retriever"),
        ("tabby cat", "tabby"),
        ("mushrooms", "mushroom"),
        ("emmet", "ant"),
    ],
)
def test_a_class_folder_names_the_imagenet_class_it_is_named_after(folder: str, name: str) -> None:
    assert imagenet_classes().names[imagenet_index(folder)] == name


@pytest.mark.parametrize("folder", ["cats", "empty shelf", "crane", "scratched"])
def test_a_folder_that_names_no_imagenet_class_or_two_names_none(folder: str) -> None:
    # "crane" is both the bird and the machine
    assert imagenet_index(folder) is None


def test_labels_file_with_background_matches_a_model_without_it(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("background\ncat\n\ndog\n")
    classes = read_labels_file(path).matching(2, model="m.keras")
    assert classes.names == ("cat", "dog")


def test_labels_count_mismatch_names_both_numbers(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\nbird\n")
    with pytest.raises(ModelError, match=r"m\.keras has 5 classes but its labels have 3"):
        read_labels_file(path).matching(5, model="m.keras")


@pytest.mark.parametrize("content", [None, "\n\n"])
def test_unusable_labels_file_is_an_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "labels.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ModelError, match="labels.txt"):
        read_labels_file(path)


def test_top_labels_sorted_and_thresholded() -> None:
    classes = ClassNames(ids=("a", "b", "c", "d"), names=("A", "B", "C", "D"))
    scores = np.array([0.1, 0.5, 0.05, 0.35])
    assert [label.name for label in top_labels(scores, classes, top_k=3, threshold=0.0)] == ["B", "D", "A"]
    assert [label.name for label in top_labels(scores, classes, top_k=3, threshold=0.3)] == ["B", "D"]
    assert top_labels(scores, classes, top_k=10, threshold=0.0)[0].as_tuple() == ("b", "B", 0.5)


@pytest.mark.parametrize(
    ("allow", "deny", "shown"),
    [
        # by name, ignoring case, spaces and underscores alike; by WordNet id
        (["Macaw", "military uniform", "n07697537"], [], {88, 652, 934}),
        # a name two classes share (the bird and the machine) names both
        (["crane"], [], {134, 517}),
        ([], [" Egyptian_Cat ", "N02123045"], set(range(1000)) - {285, 281}),
    ],
)
def test_class_mask_names_classes_by_id_or_name(allow: list[str], deny: list[str], shown: set[int]) -> None:
    # when
    mask = class_mask(imagenet_classes(), allow=allow, deny=deny)

    # then
    assert mask is not None and mask.dtype == bool and mask.shape == (1000,)
    assert set(np.flatnonzero(mask).tolist()) == shown
    assert not mask.flags.writeable


def test_no_filter_is_no_mask() -> None:
    assert class_mask(imagenet_classes()) is None


@pytest.mark.parametrize(
    ("allow", "deny", "message"),
    [
        (["macaw"], ["hotdog"], r"^--allow and --deny cannot be combined: "),
        (
            ["macaw", "macow"],
            [],
            r"^--allow: 'macow' is not the name or id of any of the model's classes; did you mean macaw\?$",
        ),
        ([], ["hot dogg"], r"^--deny: 'hot dogg' is not .*; did you mean hotdog or hot_pot\?$"),
        (["zzzzqx"], [], r"^--allow: 'zzzzqx' is not .*; check the spelling against the model's labels$"),
        (
            [],
            ["n01818515", "hotdog", "hot pot"],
            r"^--deny names every one of the model's 3 classes; leave some to show$",
        ),
    ],
)
def test_class_mask_rejects_what_cannot_be_meant(allow: list[str], deny: list[str], message: str) -> None:
    # given
    classes = ClassNames(ids=("n01818515", "n07697537", "n07590611"), names=("macaw", "hotdog", "hot_pot"))

    # when / then
    with pytest.raises(UsageError, match=message):
        class_mask(classes, allow=allow, deny=deny)


def test_top_labels_never_lists_masked_classes() -> None:
    # given
    classes = ClassNames(ids=("a", "b", "c", "d"), names=("A", "B", "C", "D"))
    scores = np.array([0.1, 0.5, 0.05, 0.35])
    mask = np.array([True, False, True, True])

    # when
    masked = top_labels(scores, classes, top_k=3, threshold=0.0, mask=mask)
    unmasked = top_labels(scores, classes, top_k=3, threshold=0.0, mask=None)

    # then
    assert [label.name for label in masked] == ["D", "A", "C"]
    assert [label.name for label in unmasked] == ["B", "D", "A"]
    assert [label.class_index for label in top_labels(scores, classes, top_k=1, threshold=0.2, mask=mask)] == [3]
