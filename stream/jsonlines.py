"""Predictions as JSON lines, one object per inferred frame or per change of the shown label (docs/jsonl.md)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from stream.events import ShownLabels
from stream.outputs import OutputLock
from stream.types import Frame, Label, Prediction

_LABEL = {
    "type": "array",
    "description": "[class id, class name, score]; the id is the WordNet id for ImageNet, else the label itself",
    "prefixItems": [{"type": "string"}, {"type": "string"}, {"type": "number", "minimum": 0, "maximum": 1}],
    "minItems": 3,
    "items": False,
}

SCHEMA: dict[str, object] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "mnstream prediction",
    "description": "One line of mnstream's JSON lines output: what the model saw in one frame of one stream.",
    "type": "object",
    "properties": {
        "stream": {"type": "string", "description": "The stream's name."},
        "frame": {"type": "integer", "minimum": 0, "description": "The frame's index in its stream, from 0."},
        "image": {
            "type": ["string", "null"],
            "description": "The image file, when the stream is a folder or glob of still images; null for video.",
        },
        "source_s": {
            "type": ["number", "null"],
            "minimum": 0,
            "description": "The frame's timestamp in its file, in seconds; null for live sources.",
        },
        "captured_at": {"type": "number", "description": "UNIX time in seconds when the frame was captured."},
        "wall_time": {
            "type": "number",
            "description": "UNIX time in seconds when this line was written (the same clock as captured_at).",
        },
        "top_k": {
            "type": "array",
            "items": {"$ref": "#/$defs/label"},
            "description": "The top-k labels above the threshold, highest score first.",
        },
        "top1": {
            "oneOf": [{"$ref": "#/$defs/label"}, {"type": "null"}],
            "description": "The smoothed (averaged, hysteresis-held) top-1; null when there is none.",
        },
        "latency_ms": {
            "type": "number",
            "minimum": 0,
            "description": "Milliseconds from capture to this line: wall_time - captured_at.",
        },
    },
    "required": ["stream", "frame", "image", "source_s", "captured_at", "wall_time", "top_k", "top1", "latency_ms"],
    "additionalProperties": False,
    "$defs": {"label": _LABEL},
}
"""The JSON Schema (draft 2020-12) of one line."""


class JsonLinesSink:
    """Writes one JSON object per line (see `SCHEMA`), each flushed as it is written.

    `tail -f` follows the file as frames are processed, and a crash loses at most the line being written.
    """

    needs_overlay = False
    reads_image = False

    def __init__(
        self,
        target: str,
        *,
        events_only: bool,
        stream_names: Mapping[int, str],
        overwrite: bool = False,
    ) -> None:
        """Opens the target at once, so that a path that cannot be written fails before any processing.

        Args:
            target: A file path, or "-" for standard output.
            events_only: Write only the frames where a stream's smoothed top-1 changes, each stream's first included.
            stream_names: Stream id -> the name written as `stream`.
            overwrite: Whether an existing file may be replaced.

        Raises:
            UsageError: The file cannot be created (its folder is missing, or it may not be written), exists
                without `overwrite`, or another run is writing it.
        """
        self._events_only = events_only
        self._stream_names = stream_names
        self._shown = ShownLabels()
        # Frame.captured_at is monotonic (immune to clock steps); one offset, taken once, turns it into UNIX time.
        self._unix_offset_s = time.time() - time.monotonic()
        self._lock = OutputLock(target, option="--jsonl", overwrite=overwrite) if target != "-" else None
        # Held open for the whole run, line by line, and closed in close().
        self._file: TextIO = open(target, "w", encoding="utf-8") if self._lock else sys.stdout  # noqa: SIM115

    def write(self, frame: Frame, prediction: Prediction) -> None:
        if self._events_only and not self._shown.changed(prediction):
            return
        smoothed = prediction.smoothed
        now = time.monotonic()
        # To the microsecond, finer than any file's clock: the decoder's milliseconds over 1000 carry float noise
        # (0.30000000000000004).
        position_s = None if frame.position_s is None else round(frame.position_s, 6)
        record = {
            "stream": self._stream_names[frame.stream_id],
            "frame": frame.index,
            "image": frame.origin or None,
            "source_s": position_s,
            "captured_at": frame.captured_at + self._unix_offset_s,
            "wall_time": now + self._unix_offset_s,
            "top_k": [label_json(label) for label in prediction.labels],
            "top1": None if smoothed is None else label_json(smoothed),
            "latency_ms": round((now - frame.captured_at) * 1000, 3),
        }
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._lock is None:
            self._file.flush()
            return
        try:
            self._file.close()
        finally:
            self._lock.release()


def label_json(label: Label) -> list[object]:
    """A label as JSON lines and the HTTP route write it: [class id, name, score]."""
    # Four decimals keep a line short, and still separate the int8 models' score steps (1/256).
    return [label.class_id, label.name, round(label.score, 4)]
