"""Transfer learning: a frozen ImageNet MobileNet's pooled features under a new softmax head (imports TensorFlow)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from rich.progress import Progress

from stream.config import ModelConfig
from stream.datasets import batches
from stream.engines import PIXEL_SCALES
from stream.engines.conversion import taking_mobilenet_input
from stream.engines.keras import build_application, keras, tf
from stream.labels import IMAGENET_CLASSES, imagenet_classes, imagenet_index
from stream.types import UsageError

if TYPE_CHECKING:
    from stream.training import TrainingOptions

PATIENCE_EPOCHS = 3
"""Epochs without a lower validation loss before training stops (and goes back to the best epoch's weights)."""
DROPOUT = 0.2
"""The head's dropout before its dense layer, against overfitting: a few hundred images, 1280 features each."""
FINE_TUNING_RATE = 0.1
"""Fine-tuning's learning rate, as a fraction of the head's: larger steps would wreck the ImageNet features."""


@dataclasses.dataclass(frozen=True, slots=True)
class Fitted:
    """What a training run's epochs did: the epochs run, the best one (whose weights were kept), its metrics."""

    epochs: int
    best_epoch: int
    history: dict[str, list[float]]

    @classmethod
    def of(cls, history: keras.callbacks.History) -> Fitted:
        losses = history.history["val_loss"]
        return cls(
            len(losses), int(np.argmin(losses)) + 1, {key: list(map(float, v)) for key, v in history.history.items()}
        )


class TransferModel:
    """A named MobileNet cut at its pooled features, under a new head that names `classes`.

    When every class is named after an ImageNet class ("ants", "bees"), the head starts as ImageNet's own
    classifier for them, and only its biases train: weights learnt from about 1300 photos a class generalise
    better than any that a few hundred photos teach (benchmarks/RESULTS.md, "Training").

    The base splits in two: the frozen part below the cut, whose output is computed once per training image (and
    augmented view), and the layers above it that `--fine-tune` trains (none by default). The head and those
    layers then train on the stored outputs, never running the frozen part again.
    """

    def __init__(
        self, config: ModelConfig, classes: Sequence[str], *, fine_tune: int, seed: int, imagenet_head: bool = True
    ) -> None:
        """Builds the base with its weights (ImageNet unless `config.weights` says otherwise) and a new head.

        Args:
            config: The named MobileNet and its weights.
            classes: The head's class names, in output order.
            fine_tune: The base's top layers to train, rounded up to where a single tensor enters them.
            seed: Seeds the head's initial weights, its dropout and the order of the training images.
            imagenet_head: Start from ImageNet's classifier when every class names an ImageNet class.

        Raises:
            ModelError: As `build_application`.
        """
        keras.utils.set_random_seed(seed)
        application = build_application(config)
        pooled = next(layer for layer in application.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
        # MobileNetV3 pools with keepdims; its features are still one vector per image.
        features = keras.layers.Flatten()(pooled.output) if len(pooled.output.shape) > 2 else pooled.output
        base = keras.Model(application.input, features, name=f"{config.model}_features")
        base.trainable = False
        cut, self.top = _split(base, fine_tune)
        self.frozen = keras.Model(base.input, cut, name=f"{config.model}_frozen")
        self.fine_tuned_layers = len(self.top.layers) - 1 if self.top is not None else 0
        dense = keras.layers.Dense(len(classes), activation="softmax")
        self.head = keras.Sequential(
            [keras.Input((features.shape[-1],)), keras.layers.Dropout(DROPOUT), dense], name="head"
        )
        indexes = _imagenet_indexes(config, classes) if imagenet_head else []
        classifier = _imagenet_classifier(application, features.shape[-1]) if indexes else None
        self.imagenet_head = tuple(imagenet_classes().names[index] for index in indexes) if classifier else ()
        """The ImageNet classes whose classifier the head kept, one per class; empty for a new head."""
        if classifier is not None:
            kernel, bias = classifier
            dense.set_weights([kernel[:, indexes], bias[indexes]])
            dense.kernel.trainable = False
        stored = keras.Input(cut.shape[1:])
        # training=False keeps batch norm in inference mode even while fine-tuning trains the layers around it.
        above = self.top(stored, training=False) if self.top is not None else stored
        self._on_stored = keras.Model(stored, self.head(above), name="trained")
        _, height, width, _ = application.input_shape
        self.input_size = (int(width), int(height))
        self.preprocess = config.keras_input_range
        pixels = keras.Input((height, width, 3))
        self._model = keras.Model(pixels, self._on_stored(self.frozen(pixels, training=False)), name=config.model)
        scale, offset = PIXEL_SCALES[self.preprocess]

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)])
        def frozen_outputs(images: tf.Tensor) -> tf.Tensor:
            return self.frozen(tf.cast(images, tf.float32) * scale + offset, training=False)

        self._frozen_outputs = frozen_outputs

    def stored(self, images: np.ndarray, *, batch_size: int) -> np.ndarray:
        """The frozen part's outputs for (N, height, width, 3) uint8 RGB images, computed `batch_size` at a time."""
        outputs = [self._frozen_outputs(batch).numpy() for batch in batches(images, batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0, *self.frozen.output.shape[1:]), np.float32)

    def fit(
        self,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        options: TrainingOptions,
        progress: Progress,
    ) -> list[Fitted]:
        """Trains on (stored outputs, labels): the head, then, with `fine_tune`, the top of the base with it at a
        tenth of the rate; each stops early on the validation loss and keeps its best epoch.
        """
        fitted = [self._fit(train, val, options, options.learning_rate, progress, "head")]
        if self.top is not None:
            # Each layer is set: the top shares its layers with the base, which froze each of them.
            self.top.trainable = True
            for layer in self.top.layers:
                # A few hundred images would skew batch norm's statistics.
                layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
            rate = options.learning_rate * FINE_TUNING_RATE
            fitted.append(self._fit(train, val, options, rate, progress, "fine-tuning"))
        return fitted

    def predict_stored(self, stored: np.ndarray) -> np.ndarray:
        """The class index the model gives each of the frozen part's outputs."""
        return self._on_stored.predict(stored, verbose=0).argmax(axis=1)

    def classifier(self) -> keras.Model:
        """The whole model, base and head, taking pixels scaled to [-1, 1] as every mnstream model file does."""
        return taking_mobilenet_input(self._model, self.preprocess)

    def _fit(
        self,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        options: TrainingOptions,
        learning_rate: float,
        progress: Progress,
        stage: str,
    ) -> Fitted:
        # A model of each stage's own, sharing the layers: what is trainable is fixed when a model compiles, and a
        # compiled inner model would save its optimizer into model.keras, which warns on loading once the head's
        # frozen kernel is trainable again.
        trainer = keras.Model(self._on_stored.inputs, self._on_stored.outputs)
        trainer.compile(
            optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        stopping = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=PATIENCE_EPOCHS, restore_best_weights=True
        )
        steps = -(-len(train[0]) // options.batch_size)
        history = trainer.fit(
            *train,
            validation_data=val,
            epochs=options.epochs,
            batch_size=options.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[stopping, EpochBars(progress, stage, options.epochs, steps=steps)],
        )
        return Fitted.of(history)


def _imagenet_indexes(config: ModelConfig, classes: Sequence[str]) -> list[int]:
    """The ImageNet class each of `classes` names, when each names a different one and the weights are
    ImageNet's; else none.
    """
    indexes = [imagenet_index(name) for name in classes] if config.weights == "imagenet" else []
    return indexes if None not in indexes and len(set(indexes)) == len(indexes) else []


def _imagenet_classifier(application: keras.Model, features: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The (kernel, bias) of `application`'s ImageNet classifier on its pooled features, or None when a layer
    stands between them (MobileNetV3's).
    """
    kernel, bias = next(layer for layer in reversed(application.layers) if layer.weights).get_weights()
    if kernel.size != features * IMAGENET_CLASSES:
        return None
    return kernel.reshape(features, IMAGENET_CLASSES), bias


def _split(base: keras.Model, fine_tune: int) -> tuple[keras.KerasTensor, keras.Model | None]:
    """Where to cut `base` for `fine_tune` trainable layers: the one tensor that enters the top layers, and those
    layers as a model of it (None when nothing is fine-tuned).

    A cut inside a residual block would have two tensors cross it, so it moves down to the block's start.
    """
    layers = base.layers
    if fine_tune <= 0:
        return base.output, None
    for start in range(max(1, len(layers) - fine_tune), 0, -1):
        above = {id(layer) for layer in layers[start:]}
        entering = {
            id(tensor): tensor
            for layer in layers[start:]
            for node in layer._inbound_nodes
            for tensor in node.input_tensors
            if id(tensor._keras_history.operation) not in above
        }
        if len(entering) == 1:
            (cut,) = entering.values()
            return cut, keras.Model(cut, base.output, name="fine_tuned")
    raise UsageError(f"--fine-tune {fine_tune} is more than the {len(layers) - 1} layers of {base.name}")


class EpochBars(keras.callbacks.Callback):
    """A rich progress bar per epoch: its batches, then its training and validation loss and accuracy."""

    def __init__(self, progress: Progress, stage: str, epochs: int, *, steps: int) -> None:
        super().__init__()
        self._progress, self._stage, self._epochs, self._steps = progress, stage, epochs, steps
        self._task = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._task = self._progress.add_task(
            f"{self._stage} epoch {epoch + 1}/{self._epochs}", total=self._steps, metrics=""
        )

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        self._progress.update(
            self._task,
            completed=batch + 1,
            metrics=f"loss {logs.get('loss', float('nan')):.3f} accuracy {logs.get('accuracy', float('nan')):.3f}",
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        self._progress.update(
            self._task,
            completed=self._steps,
            metrics=" ".join(
                f"{name.replace('_', ' ')} {logs[name]:.3f}"
                for name in ("loss", "accuracy", "val_loss", "val_accuracy")
                if name in logs
            ),
        )
