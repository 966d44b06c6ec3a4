"""Held-out accuracy of `mnstream train`'s model over many seeded splits, by augmented views, fine-tuned layers and
head (ImageNet's classifier for classes named after ImageNet's, or a new one).

One split's 49 held-out images move the accuracy in steps of 2 points; the mean over seeds says more. The frozen
part of the base runs once per image and view for all images, then each seed splits as `mnstream train --seed`
does and trains the shipped head (and fine-tuned layers) on the stored outputs.

    KERAS_HOME=<writable copy of ../shared/keras_home> python benchmarks/train_heads.py \
        ../shared/datasets/hymenoptera --views 0,4,8 --fine-tune 0,21 --heads imagenet,new --seeds 10
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from stream.config import ModelConfig
from stream.datasets import Decoding, split_data
from stream.training import TrainingOptions
from stream.transfer import TransferModel


def main() -> None:
    """Prints one line per (views, fine-tune): the mean, lowest and each seed's held-out accuracy."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--views", default="0,4,8", help="augmented views per training image, comma-separated")
    parser.add_argument("--fine-tune", default="0", help="fine-tuned layers, comma-separated")
    parser.add_argument("--heads", default="imagenet,new", help="imagenet, new or both, comma-separated")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    views = [int(each) for each in args.views.split(",")]
    first = split_data(args.data, val_fraction=0.2, seed=0)
    samples = sorted((*first.train, *first.val), key=lambda sample: sample.path)
    quiet = Progress(console=Console(file=io.StringIO()))
    for fine_tune in (int(each) for each in args.fine_tune.split(",")):
        started = time.monotonic()
        transfer = TransferModel(ModelConfig(), first.classes, fine_tune=fine_tune, seed=0)
        decoding = Decoding(samples, transfer.input_size, views=1 + max(views), random=np.random.default_rng(0))
        stored, decoded = [], []
        for chunk in decoding:
            outputs = transfer.stored(chunk.images, batch_size=32)
            stored.append(outputs.reshape(len(chunk.samples), 1 + max(views), *outputs.shape[1:]))
            decoded += [sample.path for sample in chunk.samples]
        stored_outputs = np.concatenate(stored)
        index = {path: row for row, path in enumerate(decoded)}
        print(
            f"fine-tune {fine_tune}: {len(decoded)} images x {1 + max(views)} views "
            f"in {time.monotonic() - started:.0f} s"
        )
        for count in views:
            for head in args.heads.split(","):
                accuracies = []
                for seed in range(args.seeds):
                    split = split_data(args.data, val_fraction=0.2, seed=seed)
                    train = [index[sample.path] for sample in split.train if sample.path in index]
                    val = [index[sample.path] for sample in split.val if sample.path in index]
                    labels = np.array([sample.label for sample in samples if sample.path in index])
                    x_train = stored_outputs[train, : 1 + count].reshape(-1, *stored_outputs.shape[2:])
                    y_train = np.repeat(labels[train], 1 + count)
                    model = TransferModel(
                        ModelConfig(), split.classes, fine_tune=fine_tune, seed=seed, imagenet_head=head == "imagenet"
                    )
                    val_set = (stored_outputs[val, 0], labels[val])
                    model.fit((x_train, y_train), val_set, TrainingOptions(seed=seed), quiet)
                    predicted = model.predict_stored(stored_outputs[val, 0])
                    accuracies.append(float(np.mean(predicted == labels[val])))
                each = ", ".join(f"{accuracy:.3f}" for accuracy in accuracies)
                print(
                    f"views {count} fine-tune {fine_tune} head {head}: mean {np.mean(accuracies):.4f} "
                    f"lowest {min(accuracies):.3f} ({each})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
