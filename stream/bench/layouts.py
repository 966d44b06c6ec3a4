"""LiteRT alone in each thread layout an engine could use, on the same model-ready frames, for the ceiling."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from stream.engines import native_stderr_silenced
from stream.engines.tflite import new_interpreter


@dataclass(frozen=True, slots=True)
class Layout:
    """Interpreters of the same model, each on its own thread and its own share of the frames."""

    interpreters: int
    threads: int
    """XNNPACK threads of each interpreter."""
    frames_per_call: int

    @property
    def name(self) -> str:
        return (
            f"LiteRT alone, {_count(self.interpreters, 'interpreter')} x {_count(self.threads, 'thread')}, "
            f"{_count(self.frames_per_call, 'frame')} a call"
        )


def layouts(cores: int, batch_size: int) -> list[Layout]:
    """Interpreters of one thread against one interpreter of every thread, each a frame a call and batched.

    Interpreters here run free, never waiting for each other between batches as an engine's do: what they reach
    is more than any engine around them can, which is what a ceiling should be.
    """
    candidates = [
        Layout(cores, 1, 1),
        Layout(cores, 1, max(1, batch_size // cores)),
        Layout(1, cores, 1),
        Layout(1, cores, batch_size),
    ]
    return list(dict.fromkeys(candidates))


class LayoutTimer:
    """One layout of a model, timed over the chunks of frames it is given; its tensors allocated up front."""

    def __init__(self, model: Path | bytes, layout: Layout, *, frame_shape: tuple[int, ...]) -> None:
        """Loads the model once per interpreter of `layout`.

        Raises:
            ValueError, RuntimeError: The model cannot take `layout.frames_per_call` frames a call (a fixed batch).
        """
        self.layout = layout
        self._interpreters = []
        for _ in range(layout.interpreters):
            interpreter = new_interpreter(model, threads=layout.threads)
            index = interpreter.get_input_details()[0]["index"]
            if layout.frames_per_call != interpreter.get_input_details()[0]["shape"][0]:
                interpreter.resize_tensor_input(index, [layout.frames_per_call, *frame_shape])
            with native_stderr_silenced():
                interpreter.allocate_tensors()
            self._interpreters.append(interpreter)
        self._pool = ThreadPoolExecutor(layout.interpreters) if layout.interpreters > 1 else None
        self.frames = 0
        self.seconds = 0.0

    @property
    def frames_per_s(self) -> float | None:
        return self.frames / self.seconds if self.seconds else None

    def warm_up(self, inputs: np.ndarray) -> None:
        """Runs `inputs` untimed: XNNPACK packs its weights on the first call."""
        self._run(inputs)

    def time(self, inputs: np.ndarray) -> None:
        """Runs `inputs`, split between the interpreters, and adds the frames and the time to the totals."""
        started_at = time.monotonic()
        frames = self._run(inputs)
        self.seconds += time.monotonic() - started_at
        self.frames += frames

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._interpreters = []

    def _run(self, inputs: np.ndarray) -> int:
        shares = np.array_split(inputs, len(self._interpreters))
        if self._pool is None:
            return _invoke_all(self._interpreters[0], shares[0], self.layout.frames_per_call)
        calls = self._pool.map(_invoke_all, self._interpreters, shares, [self.layout.frames_per_call] * len(shares))
        return sum(calls)


def _invoke_all(interpreter: Interpreter, inputs: np.ndarray, frames_per_call: int) -> int:
    """Runs every whole call's worth of `inputs`; returns the frames run."""
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    calls = len(inputs) // frames_per_call
    for batch in _batches(inputs[: calls * frames_per_call], frames_per_call):
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        interpreter.get_tensor(output_index)
    return calls * frames_per_call


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def _batches(inputs: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(inputs), size):
        yield inputs[start : start + size]
