"""The model cache's folder and keys, found without TensorFlow, and `mnstream cache`."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
from rich.console import Console

from stream import cache
from stream.cli import main
from stream.commands import EXIT_OK
from stream.config import ModelConfig

pytestmark = pytest.mark.usefixtures("keras_home")


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({cache.CACHE_ENV: "/custom"}, "/custom"),
        ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/mnstream"),
        ({"HOME": "/home/someone"}, "/home/someone/.cache/mnstream"),
    ],
)
def test_cache_folder(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: str) -> None:
    for name in (cache.CACHE_ENV, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert cache.cache_dir() == Path(expected)


def test_key_follows_what_determines_the_compiled_model(keras_home: Path, tmp_path: Path) -> None:
    # given the key of a named MobileNet, whose weights Keras keeps under KERAS_HOME
    config = ModelConfig(model="mobilenet", alpha=0.25, input_size=128)
    key = cache.CompiledModelKey.of(config)
    assert key is not None
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")

    # then each input that changes the model changes the key, and nothing else does
    assert cache.CompiledModelKey.of(dataclasses.replace(config, top_k=3)) == key
    for changed in (
        dataclasses.replace(config, alpha=0.5, input_size=160),
        dataclasses.replace(config, preprocess="raw"),
        dataclasses.replace(config, labels=str(labels)),
        dataclasses.replace(config, weights=str(keras_home / "models" / "mobilenet_5_0_160_tf.h5")),
    ):
        other = cache.CompiledModelKey.of(changed)
        assert other is not None and other.file_name("m") != key.file_name("m"), changed
    assert (
        key.weights
        == cache.CompiledModelKey.of(
            dataclasses.replace(config, weights=str(keras_home / "models" / "mobilenet_2_5_128_tf.h5"))
        ).weights
    )
    assert key.converter is not None and "tensorflow" in key.converter


def test_no_key_without_weights_to_hash() -> None:
    # Random weights are not worth keeping; missing ImageNet weights are downloaded by Keras before they count.
    assert cache.CompiledModelKey.of(ModelConfig(weights="none")) is None
    assert cache.CompiledModelKey.of(ModelConfig(model="mobilenet_v3_large")) is None


def test_cache_subcommand_lists_and_clears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a cache holding a model and a temporary file a killed run left
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    (tmp_path / "mobilenet_v2-float32-0123.tflite").write_bytes(b"x" * 1000)
    (tmp_path / ".abc.partial").write_bytes(b"x")

    # when / then
    listed = _run("cache")
    assert f"{tmp_path}: 1 compiled models" in listed and "mobilenet_v2-float32-0123.tflite" in listed
    assert f"deleted 2 files (0.0 MB) from {tmp_path}" in _run("cache", "--clear")
    assert list(tmp_path.iterdir()) == []


def _run(*args: str) -> str:
    console = Console(file=io.StringIO(), width=200)
    assert main(list(args), console=console) == EXIT_OK
    return console.file.getvalue()
