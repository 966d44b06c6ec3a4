"""The Ray Serve application: replicas that each load one engine and batch the frames of every client together,
for `--engine serve` runs (through a DeploymentHandle) and for HTTP clients (POST an image, get its top-k).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import ray
from ray import serve
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from stream.config import ModelConfig
from stream.engines import create_engine
from stream.jsonlines import label_json
from stream.labels import ClassNames
from stream.recognizer import Recognizer, model_input

APP_NAME = "mnstream"
"""The Serve application `mnstream serve` deploys and `--engine serve` runs look up."""
ROUTE = "/classify"
CLIENTS_COUNTED = 256
"""The most recent clients whose frames `stats` counts; older ones are forgotten, so a server up for months holds
no more."""
MAX_BODY_BYTES = 32 * 1024 * 1024
"""The largest HTTP body read: a few dozen large photos. More is refused (413) rather than held in memory."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a client needs to know of the served model: no model file, no TensorFlow."""

    name: str
    input_size: tuple[int, int]
    """(width, height) of the uint8 frames `infer` takes."""
    classes: ClassNames
    max_batch_size: int
    """The most frames one `infer` call may carry."""


@dataclass(frozen=True, slots=True)
class Inferred:
    """One call's scores, and the replica batch they were computed in."""

    scores: np.ndarray
    """(frames, classes) probabilities, in the order of the call's frames."""
    batch_id: str
    """The replica and its batch number: calls that share it were in one model call."""
    batch_frames: int
    """Frames in that model call, from every client whose call it held."""
    node_id: str
    """The Ray node of the replica."""


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """What one replica has inferred since it started."""

    replica_id: str
    batches: int
    mixed_batches: int
    """Model calls that held frames of more than one client."""
    frames_by_client: dict[str, int]
    """Frames of each of the last `CLIENTS_COUNTED` clients (HTTP requests count as one, `http`)."""


def _frame_count(calls: Sequence[tuple[np.ndarray, str]]) -> int:
    return sum(len(images) for images, _ in calls)


class Classifier:
    """One replica: an engine of the model, its frames batched across the calls of every client.

    The engine is created, called and closed on one thread of the replica's own, so that the replica's event
    loop keeps taking requests (and forming the next batch) while a batch runs.
    """

    def __init__(self, model: ModelConfig, *, batch_size: int, max_wait_ms: float) -> None:
        """Loads the model.

        Args:
            model: The model and its labels, top-k, threshold and class filter (for HTTP answers).
            batch_size: The most frames in one model call, summed over the calls batched together.
            max_wait_ms: How long a batch waits to fill after its first call.
        """
        self._engine_thread = ThreadPoolExecutor(1, thread_name_prefix="mnstream-engine")
        self._recognizer = self._engine_thread.submit(self._load, model).result()
        self._infer_batch.set_max_batch_size(batch_size)
        self._infer_batch.set_batch_wait_timeout_s(max_wait_ms / 1000)
        self._info = ModelInfo(
            self._recognizer.engine.name, self._recognizer.input_size, self._recognizer.classes, batch_size
        )
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._node_id = ray.get_runtime_context().get_node_id()
        self._batches = 0
        self._mixed_batches = 0
        self._frames_by_client: Counter[str] = Counter()

    @staticmethod
    def _load(model: ModelConfig) -> Recognizer:
        recognizer = Recognizer(
            create_engine(model), top_k=model.top_k, threshold=model.threshold, allow=model.allow, deny=model.deny
        )
        recognizer.warm_up()
        return recognizer

    async def describe(self) -> ModelInfo:
        """The served model's name, input size, classes and largest call."""
        return self._info

    async def stats(self) -> ReplicaStats:
        """This replica's batches so far, and how many held frames of several clients."""
        return ReplicaStats(self._replica_id, self._batches, self._mixed_batches, dict(self._frames_by_client))

    async def infer(self, images: np.ndarray, client: str) -> Inferred:
        """Class probabilities for an (N, height, width, 3) uint8 RGB batch at the model's size, N at most
        `ModelInfo.max_batch_size`.

        Args:
            images: The frames, resized as `stream.recognizer.model_input` does.
            client: Who sends them, for `stats`.

        Raises:
            ValueError: The frames are not uint8 RGB at the model's size, or too many.
        """
        width, height = self._info.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (height, width, 3):
            raise ValueError(f"expected ({height}, {width}, 3) uint8 frames, got {images.shape} {images.dtype}")
        if not 1 <= len(images) <= self._info.max_batch_size:
            raise ValueError(f"a call carries 1 to {self._info.max_batch_size} frames, not {len(images)}")
        return await self._infer_batch((images, client))

    async def __call__(self, request: Request) -> JSONResponse:
        """HTTP: POST one JPEG or PNG as the body, or several as multipart/form-data files; the top-k of each."""
        if request.method != "POST":
            return _refusal(405, f"POST a JPEG or PNG image to {ROUTE}")
        try:
            bodies = await _image_bodies(request)
            size = self._info.input_size
            prepared = np.stack(
                await asyncio.gather(
                    *(asyncio.to_thread(_prepared, body, index, size) for index, body in enumerate(bodies))
                )
            )
        except _Refused as refused:
            return _refusal(refused.status, str(refused))
        largest = self._info.max_batch_size
        calls = [(prepared[start : start + largest], "http") for start in range(0, len(prepared), largest)]
        scores = np.concatenate([done.scores for done in await asyncio.gather(*map(self._infer_batch, calls))])
        labels = [[label_json(label) for label in self._recognizer.labels(row)] for row in scores]
        return JSONResponse({"model": self._info.name, "images": [{"top_k": top_k} for top_k in labels]})

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02, batch_size_fn=_frame_count)
    async def _infer_batch(self, calls: list[tuple[np.ndarray, str]]) -> list[Inferred]:
        images = np.concatenate([images for images, _ in calls])
        scores = await asyncio.get_running_loop().run_in_executor(
            self._engine_thread, self._recognizer.engine.infer, images
        )
        batch_id = f"{self._replica_id}#{self._batches}"
        self._batches += 1
        clients: Counter[str] = Counter()
        for call_images, client in calls:
            clients[client] += len(call_images)
        self._count_frames(clients)
        splits = np.cumsum([len(call_images) for call_images, _ in calls])[:-1]
        return [Inferred(part, batch_id, len(images), self._node_id) for part in np.split(scores, splits)]

    def _count_frames(self, clients: Counter[str]) -> None:
        self._mixed_batches += len(clients) > 1
        self._frames_by_client.update(clients)
        while len(self._frames_by_client) > CLIENTS_COUNTED:
            del self._frames_by_client[next(iter(self._frames_by_client))]

    def __del__(self) -> None:
        # Serve calls this as the replica stops: the engine is closed on the thread that made it.
        if hasattr(self, "_recognizer"):
            self._engine_thread.submit(self._recognizer.close).result()
        self._engine_thread.shutdown()


class _Refused(Exception):
    """An HTTP request that cannot be answered, with its 4xx status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _image_bodies(request: Request) -> list[bytes]:
    """The encoded images of a request: its body, or each file of a multipart form.

    Raises:
        _Refused: Too large, empty, or a form without files.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refused(413, f"the body is {int(declared)} bytes; at most {MAX_BODY_BYTES} are read")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form()
        except Exception as error:
            raise _Refused(400, f"the multipart form cannot be read: {error}") from None
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise _Refused(400, "the form has no files; send each image as a file part")
        bodies = [await file.read() for file in files]
    else:
        bodies = [await request.body()]
    if sum(map(len, bodies)) > MAX_BODY_BYTES:
        raise _Refused(413, f"the images add up to more than {MAX_BODY_BYTES} bytes")
    return bodies


def _prepared(body: bytes, index: int, size: tuple[int, int]) -> np.ndarray:
    """An encoded image as the model takes it, as a run prepares its frames.

    Raises:
        _Refused: Empty, or not an image OpenCV decodes.
    """
    if not body:
        raise _Refused(400, f"image {index} is empty; POST a JPEG or PNG")
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise _Refused(415, f"image {index} ({len(body)} bytes) is not a JPEG or PNG image")
    return model_input(image, size)
