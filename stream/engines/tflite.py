"""TensorFlow Lite classifiers (uint8, int8 or float32 input) on LiteRT's CPU kernels, without TensorFlow."""

from __future__ import annotations

import os
import queue
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

from stream.config import ModelConfig
from stream.engines import PIXEL_SCALES, native_stderr_silenced
from stream.labels import (
    IMAGENET_CLASSES,
    ClassNames,
    imagenet_classes,
    prefer_imagenet,
    read_labels_file,
    read_metadata_labels,
)
from stream.types import ModelError, first_line

_INPUT_TYPES = {np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.float32)}


class TFLiteEngine:
    """Runs a .tflite image classifier on uint8 batches, split across interpreters of one thread each.

    XNNPACK's threads split each layer and wait for each other after it; separate interpreters never wait, and
    LiteRT lets go of the GIL while one runs, so interpreters of one thread each are the fastest layout
    (benchmarks/RESULTS.md, "Engine layouts").

    A float model's frames go to the interpreters one at a time, each to whichever is free: an interpreter that
    another thread (decoding, encoding) held up does not leave the others waiting for its share of the batch.
    `infer` may be called from several threads at once (the pipeline keeps two batches in flight); the engine is
    closed once none is running.
    """

    def __init__(
        self,
        interpreters: Sequence[Interpreter],
        labels: ClassNames | None,
        *,
        name: str,
        preprocess: str,
        model: Path | bytes,
    ) -> None:
        """Wraps interpreters of the same model whose tensors are allocated.

        Args:
            interpreters: The model, once per thread, after `allocate_tensors()`.
            labels: The model's class names (from --labels or its metadata); None to fall back to ImageNet's.
            name: The model's name in messages, usually its file name.
            preprocess: A `PIXEL_SCALES` mode: the value range the model was trained on.
            model: The file or bytes the interpreters were loaded from.

        Raises:
            ModelError: The model is not a one-input image classifier this engine can feed, or the labels do not
                match its outputs.
        """
        interpreter = interpreters[0]
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"{name} has {len(inputs)} inputs and {len(outputs)} outputs; an image classifier has one of each"
            )
        source, target = inputs[0], outputs[0]
        shape = tuple(None if size < 0 else int(size) for size in source["shape_signature"])
        if len(shape) != 4 or shape[3] != 3 or None in shape[1:3]:
            raise ModelError(f"{name} takes input {shape}; an image classifier takes (N, height, width, 3)")
        if len(target["shape"]) != 2:
            raise ModelError(f"{name} outputs shape {tuple(target['shape'])}; a classifier outputs (N, classes)")
        self.name = name
        self.model = model
        """The file or bytes it was loaded from, for whoever measures other ways to run it (the benchmark)."""
        _, height, width, _ = shape
        self.input_size = (width, height)
        dtype = np.dtype(source["dtype"])
        self._frame_by_frame = dtype == np.float32
        self._runners = [_Runner(each, source, target, frame_by_frame=self._frame_by_frame) for each in interpreters]
        self._idle: queue.SimpleQueue[_Runner] = queue.SimpleQueue()
        """The interpreters no call is running: a pool thread takes one for each share of a batch."""
        for runner in self._runners:
            self._idle.put(runner)
        self._pool: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(len(interpreters), thread_name_prefix=f"litert-{name}")
            if len(interpreters) > 1
            else None
        )
        self._pixels = _pixel_table(dtype, source["quantization"], preprocess, model=name)
        scale, zero_point = target["quantization"]
        self._dequantize = (float(scale), int(zero_point)) if scale else None
        self.classes, self._first_class = _match_classes(labels, int(target["shape"][1]), model=name)
        self._closed = False
        self._needs_softmax = self._outputs_are_logits(np.dtype(target["dtype"]))

    @classmethod
    def from_config(cls, config: ModelConfig) -> TFLiteEngine:
        """Loads `config.model`, a .tflite file, with its labels: --labels, else its metadata, else ImageNet's.

        Raises:
            ModelError: The file is missing, is not a TensorFlow Lite model, needs ops LiteRT's CPU kernels lack,
                or its labels cannot be found or do not match it.
        """
        path = Path(config.model)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist; check --model")
        labels = read_labels_file(config.labels) if config.labels else read_metadata_labels(path)
        preprocess = "mobilenet" if config.preprocess == "auto" else config.preprocess
        return cls.load(path, labels, name=path.name, preprocess=preprocess, threads=config.threads)

    @classmethod
    def load(
        cls, model: Path | bytes, labels: ClassNames | None, *, name: str, preprocess: str, threads: int | None
    ) -> TFLiteEngine:
        """Loads a .tflite model from a file or from memory, once per thread.

        Args:
            model: The file, or the model's bytes (a compiled model that could not be cached).
            labels: As for the constructor.
            name: The model's name in messages.
            preprocess: As for the constructor.
            threads: CPU threads, each with its own interpreter; all cores when None.

        Raises:
            ModelError: It is not a TensorFlow Lite model, or it needs ops LiteRT's CPU kernels lack.
        """
        interpreters = []
        for _ in range(threads or os.cpu_count() or 1):
            try:
                # LiteRT's default op resolver (OpResolverType.AUTO, i.e. BUILTIN) applies the default delegates,
                # so XNNPACK runs the float and int8 graphs without being asked for.
                interpreter = new_interpreter(model, threads=1)
            except ValueError as error:
                raise ModelError(
                    f"{name} is not a TensorFlow Lite model ({first_line(error)}); check --model"
                ) from None
            try:
                # Allocation is where XNNPACK announces itself on stderr, below the message level users should see.
                with native_stderr_silenced():
                    interpreter.allocate_tensors()
            except RuntimeError as error:
                raise ModelError(f"{name} cannot run on LiteRT's CPU kernels: {first_line(error)}") from None
            interpreters.append(interpreter)
        return cls(interpreters, labels, name=name, preprocess=preprocess, model=model)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Runs the model on an (N, height, width, 3) uint8 RGB batch; returns (N, classes) probabilities."""
        scores = self._run(images)
        if self._needs_softmax:
            scores = _softmax(scores)
        return scores[:, self._first_class :]

    def close(self) -> None:
        # Drops the interpreters now, with the weights XNNPACK packed for them, rather than whenever GC runs.
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown()
        self._runners = []

    def model_inputs(self, images: np.ndarray) -> np.ndarray:
        """A uint8 RGB batch as the values the model's input takes."""
        inputs = np.empty(images.shape, images.dtype if self._pixels is None else self._pixels.dtype)
        _write_model_values(images, self._pixels, out=inputs)
        return inputs

    def _run(self, images: np.ndarray) -> np.ndarray:
        """The model's dequantized outputs, every column, for a uint8 RGB batch."""
        if self._closed:
            raise RuntimeError(f"the {self.name} engine is closed")
        if self._frame_by_frame:
            shares = np.split(images, len(images))
        else:
            shares = np.array_split(images, min(len(self._runners), len(images)))
        run_each = map if self._pool is None or len(shares) == 1 else self._pool.map
        raw = np.concatenate(list(run_each(self._run_share, shares)))
        scores = raw.astype(np.float32)
        if self._dequantize is not None:
            scale, zero_point = self._dequantize
            scores = (scores - zero_point) * scale
        return scores

    def _run_share(self, images: np.ndarray) -> np.ndarray:
        runner = self._idle.get()
        try:
            return runner.run(images, self._pixels)
        finally:
            self._idle.put(runner)

    def _outputs_are_logits(self, dtype: np.dtype) -> bool:
        if self._dequantize is not None and dtype.kind in "iu":
            # TFLite's quantization spec fixes a quantized softmax's output at scale 1/256 over [0, 1). Such an
            # output is probabilities, though its rounded values need not sum to 1 (0.6 for a black frame on
            # the coral MobileNetV2), so a probe could not tell.
            scale, zero_point = self._dequantize
            info = np.iinfo(dtype)
            return not (0 <= (info.min - zero_point) * scale and (info.max - zero_point) * scale <= 1)
        # A float model may end in logits: ask it once, on a black frame, as the Keras engine does.
        width, height = self.input_size
        probe = self._run(np.zeros((1, height, width, 3), np.uint8))
        return not (np.all(probe >= 0) and np.allclose(probe.sum(axis=1), 1.0, atol=1e-3))


def new_interpreter(model: Path | bytes, *, threads: int) -> Interpreter:
    """A LiteRT interpreter of a .tflite file or of a model's bytes, its tensors not yet allocated.

    Raises:
        ValueError: It is not a TensorFlow Lite model.
    """
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    return Interpreter(**source, num_threads=threads)


class _Runner:
    """One interpreter and the batch its tensors are allocated for."""

    def __init__(self, interpreter: Interpreter, source: dict, target: dict, *, frame_by_frame: bool) -> None:
        self._interpreter = interpreter
        self._input_index = source["index"]
        self._output_index = target["index"]
        self._batch = int(source["shape"][0])  # what the tensors are allocated for now
        # Until a resize fails: the signature's batch is no guide (coral's says 1 and means it, old converters
        # wrote 1 for graphs that resize). A float model is never resized: XNNPACK's float kernels run a frame at a
        # time faster than a batch, while int8 ones gain from batching (benchmarks/RESULTS.md).
        self._resizable = not frame_by_frame

    def run(self, images: np.ndarray, pixels: np.ndarray | None) -> np.ndarray:
        """The model's raw outputs for uint8 RGB images; `pixels` maps their values to the model's (None: as they are)."""
        if self._fit_batch(len(images)):
            return self._invoke(images, pixels)
        # A fixed batch (1 for the coral models and float ones): one call per frame, slower than one call for the
        # batch where the model allows it (benchmarks/RESULTS.md).
        chunks = range(0, len(images), self._batch)
        return np.concatenate([self._invoke(images[start : start + self._batch], pixels) for start in chunks])

    def _fit_batch(self, count: int) -> bool:
        """Resizes the input to `count` images where the model allows; False where its batch is fixed."""
        if count == self._batch:
            return True
        if not self._resizable:
            return False
        shape = self._interpreter.get_input_details()[0]["shape"]
        try:
            self._interpreter.resize_tensor_input(self._input_index, [count, *shape[1:]])
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError):
            # A reshape op with the batch baked in (the coral models) refuses at allocation: back to the shape
            # that worked, and never try again.
            self._interpreter.resize_tensor_input(self._input_index, [self._batch, *shape[1:]])
            self._interpreter.allocate_tensors()
            self._resizable = False
            return False
        # Reallocating is cheap once the arena has grown, so following the batch size beats padding batches.
        self._batch = count
        return True

    def _invoke(self, images: np.ndarray, pixels: np.ndarray | None) -> np.ndarray:
        """Runs one allocated batch; a shorter `images` is padded with blank frames whose scores are dropped."""
        count = len(images)
        # The values go straight into the input tensor, with no batch of them in between to copy. LiteRT refuses to
        # run while a view of its buffers is alive, so the view is gone before `invoke`.
        inputs = self._interpreter.tensor(self._input_index)()
        _write_model_values(images, pixels, out=inputs[:count])
        inputs[count:] = 0
        del inputs
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output_index)[:count]


def _write_model_values(images: np.ndarray, pixels: np.ndarray | None, *, out: np.ndarray) -> None:
    """Writes the model's input values for uint8 RGB images into `out`, an array of their shape."""
    if pixels is None:
        np.copyto(out, images)
    else:
        # OpenCV's table lookup costs a third of NumPy's `take` (0.05 ms a 224x224 frame against 0.12-0.19).
        cv2.LUT(images.reshape(len(images), -1), pixels, dst=out.reshape(len(images), -1))


def _pixel_table(dtype: np.dtype, quantization: tuple[float, int], preprocess: str, *, model: str) -> np.ndarray | None:
    """The model's input value for each pixel value 0..255, or None where the model takes pixels unchanged.

    Raises:
        ModelError: The input type is not uint8, int8 or float32, or a quantized input has no scale.
    """
    if dtype not in _INPUT_TYPES:
        raise ModelError(f"{model} takes {dtype.name} input; this engine feeds uint8, int8 or float32")
    scale, offset = PIXEL_SCALES[preprocess]
    values = np.arange(256) * scale + offset
    if dtype == np.float32:
        return values.astype(np.float32)
    step, zero_point = quantization
    if not step:
        raise ModelError(f"{model} takes {dtype.name} input without quantization parameters; re-export it")
    info = np.iinfo(dtype)
    table = np.clip(np.round(values / step + zero_point), info.min, info.max)
    # The coral MobileNets take uint8 at scale 1/128, zero point 128: (q - 128) / 128 is within one step of
    # x / 127.5 - 1 for every pixel x, and TF-slim calibrated them on raw pixels (mean 128, std 128). Feeding
    # pixels unchanged (shifted by 128 for int8) is what such a model expects, and skips the lookup for uint8.
    shifted = np.arange(256) + info.min
    if np.abs(table - shifted).max() <= 1:
        if dtype == np.uint8:
            return None
        table = shifted
    return table.astype(dtype)


def _match_classes(labels: ClassNames | None, class_count: int, *, model: str) -> tuple[ClassNames, int]:
    """The names of the model's classes, and the first output column they name.

    Raises:
        ModelError: There are no labels and the model is not an ImageNet classifier, or the counts differ.
    """
    imagenet_with_background = IMAGENET_CLASSES + 1
    if labels is None:
        if class_count not in (IMAGENET_CLASSES, imagenet_with_background):
            raise ModelError(f"{model} has {class_count} classes and no labels in its metadata; pass --labels FILE")
        # TF-slim's ImageNet models put `background` at output 0, before the 1000 classes.
        return imagenet_classes(), class_count - IMAGENET_CLASSES
    # Dropping the background column of a 1001-class model lines output i up with Keras' ImageNet class i. A
    # smaller model of the user's may have a real background class worth showing, so only this shape loses it.
    first = int(
        class_count == imagenet_with_background
        and len(labels) == class_count
        and labels.names[0].lower() == "background"
    )
    return prefer_imagenet(labels.matching(class_count - first, model=model)), first


def _softmax(logits: np.ndarray) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)
