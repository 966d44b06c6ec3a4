"""The report's pictures, drawn with OpenCV: a confusion matrix and a contact sheet of misclassified images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from stream.datasets import read_image

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK, _PAPER = (40, 40, 40), (255, 255, 255)
CELL_PX = 64
THUMBNAIL_PX = 160
SHEET_COLUMNS = 6
SHEET_MOST = 60
"""Misclassified images on one contact sheet at most; the report lists them all."""


def confusion_image(labels: Sequence[str], matrix: np.ndarray, *, title: str) -> np.ndarray:
    """The confusion matrix as a BGR picture: true classes down, predicted across, each cell's count, shaded by
    the share of its row (its class's images).
    """
    count = len(labels)
    name_px = max(80, 12 + max(cv2.getTextSize(name, _FONT, 0.5, 1)[0][0] for name in labels))
    top, left = 60 + name_px, 30 + name_px
    width = max(left + count * CELL_PX + 10, 20 + cv2.getTextSize(title, _FONT, 0.6, 1)[0][0])
    image = np.full((top + count * CELL_PX + 10, width, 3), _PAPER, np.uint8)
    _text(image, title, (10, 22), scale=0.6)
    _text(image, "predicted", (left, 48), scale=0.5)
    _text(image, "true", (6, top - 8), scale=0.5)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    shades = cv2.applyColorMap(np.uint8(255 - shares * 200).reshape(-1, 1), cv2.COLORMAP_BONE).reshape(count, count, 3)
    for row in range(count):
        y = top + row * CELL_PX
        _text(image, labels[row], (left - name_px, y + CELL_PX // 2 + 5), scale=0.5)
        for column in range(count):
            x = left + column * CELL_PX
            cv2.rectangle(image, (x, y), (x + CELL_PX - 2, y + CELL_PX - 2), tuple(map(int, shades[row, column])), -1)
            ink = _PAPER if shares[row, column] > 0.5 else _INK
            _text(image, str(int(matrix[row, column])), (x + 8, y + CELL_PX // 2 + 6), scale=0.6, color=ink)
    # The predicted classes' names stand upright above their columns: drawn across, then turned.
    names = np.full((name_px, count * CELL_PX, 3), _PAPER, np.uint8)
    names = cv2.rotate(names, cv2.ROTATE_90_CLOCKWISE)
    for column, name in enumerate(labels):
        _text(names, name, (6, column * CELL_PX + CELL_PX // 2 + 5), scale=0.5)
    image[60 : 60 + name_px, left : left + count * CELL_PX] = cv2.rotate(names, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def contact_sheet(images: Sequence[tuple[Path, str]], *, title: str) -> np.ndarray:
    """The images, each shrunk into a square tile with its caption under it, six to a row, as a BGR picture.

    Args:
        images: (file, caption) pairs; the first `SHEET_MOST` are drawn, an unreadable file as a grey tile.
        title: The line above the tiles.
    """
    shown = images[:SHEET_MOST]
    rows = max(1, -(-len(shown) // SHEET_COLUMNS))
    tile_height = THUMBNAIL_PX + 40
    sheet = np.full((40 + rows * tile_height, SHEET_COLUMNS * (THUMBNAIL_PX + 8) + 8, 3), _PAPER, np.uint8)
    more = f" (the first {SHEET_MOST} of {len(images)})" if len(images) > SHEET_MOST else ""
    _text(sheet, title + more, (8, 26), scale=0.6)
    for index, (path, caption) in enumerate(shown):
        x = 8 + (index % SHEET_COLUMNS) * (THUMBNAIL_PX + 8)
        y = 40 + (index // SHEET_COLUMNS) * tile_height
        image = read_image(path)
        if image is None:
            image = np.full((THUMBNAIL_PX, THUMBNAIL_PX, 3), 128, np.uint8)
        scale = THUMBNAIL_PX / max(image.shape[:2])
        thumbnail = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        height, width = thumbnail.shape[:2]
        sheet[y : y + height, x : x + width] = thumbnail
        for line, words in enumerate(_fitted(caption, THUMBNAIL_PX)):
            _text(sheet, words, (x, y + THUMBNAIL_PX + 14 + line * 14), scale=0.4)
    return sheet


def _fitted(caption: str, width: int) -> list[str]:
    """The caption cut into two lines that fit `width` pixels, each shortened with ... if it must."""
    lines = caption.split("\n")[:2]
    fitted = []
    for line in lines:
        while line and cv2.getTextSize(line, _FONT, 0.4, 1)[0][0] > width:
            line = line[:-4] + "..."
        fitted.append(line)
    return fitted


def _text(image: np.ndarray, text: str, origin: tuple[int, int], *, scale: float, color: tuple = _INK) -> None:
    cv2.putText(image, text, origin, _FONT, scale, color, 1, cv2.LINE_AA)
