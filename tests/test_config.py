"""Config: defaults, the TOML file, command-line precedence, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from stream.config import SECTIONS, Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOML = REPO / "configs" / "default.toml"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_default_toml_lists_every_option_with_its_default() -> None:
    # given the shipped file, with its commented-out options (those without a default) uncommented
    text = DEFAULT_TOML.read_text()
    listed = tomllib.loads(text)
    commented = tomllib.loads(
        "\n".join(line.removeprefix("# ") for line in text.splitlines() if re.match(r"(# )?(\[|\w+ = )", line))
    )

    # then every field of every section appears, and the active values are the dataclass defaults
    for section, cls in SECTIONS.items():
        defaults = cls()
        for field in dataclasses.fields(cls):
            assert field.name in commented[section], f"{section}.{field.name} missing from {DEFAULT_TOML.name}"
            if field.name in listed.get(section, {}):
                value = listed[section][field.name]
                value = tuple(value) if isinstance(value, list) else value  # TOML arrays load as lists
                assert value == getattr(defaults, field.name), f"{section}.{field.name}"
            else:
                assert getattr(defaults, field.name) in (None, ()), f"{section}.{field.name} has a default: list it"


def test_default_toml_loads_to_the_defaults() -> None:
    assert load_config(DEFAULT_TOML) == Config()


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    # given
    path = write_toml(tmp_path, '[model]\ntop_k = 3\nmodel = "mobilenet"\n[batching]\nbatch_size = 4\n')

    # when
    config = load_config(path, overrides={"model.top_k": 7, "output.headless": True})

    # then the flag wins, the file beats the default, and untouched keys keep their defaults
    assert config.model.top_k == 7
    assert config.model.model == "mobilenet"
    assert config.batching.batch_size == 4
    assert config.output.headless is True
    assert config.batching.max_wait_ms == Config().batching.max_wait_ms


def test_runtime_is_chosen_in_the_file(tmp_path: Path) -> None:
    assert load_config(write_toml(tmp_path, '[model]\nruntime = "tensorflow"\n')).model.runtime == "tensorflow"


def test_integer_is_accepted_where_a_float_is_expected(tmp_path: Path) -> None:
    config = load_config(write_toml(tmp_path, "[batching]\nmax_wait_ms = 5\n"))
    assert config.batching.max_wait_ms == 5.0 and isinstance(config.batching.max_wait_ms, float)


@pytest.mark.parametrize(
    ("toml", "overrides", "message"),
    [
        ("[model]\nalhpa = 0.5\n", {}, r"unknown config key 'model\.alhpa'"),
        ("[modle]\nalpha = 0.5\n", {}, r"unknown config key 'modle\.alpha'"),
        ("top_k = 3\n", {}, r"config key 'top_k' must be a \[section\]"),
        ('[model]\ntop_k = "five"\n', {}, r"model\.top_k: expected int, got str"),
        ("[output]\nheadless = 1\n", {}, r"output\.headless: expected bool, got int"),
        ("[batching]\nbatch_size = true\n", {}, r"batching\.batch_size: expected int, got bool"),
        ("[batching]\nbatch_size = 0\n", {}, r"batching\.batch_size: must be >= 1"),
        ("", {"model.threshold": 2.0}, r"model\.threshold: must be between 0 and 1"),
        ("", {"batching.max_wait_ms": -1.0}, r"batching\.max_wait_ms: must be >= 0"),
        ("", {"model.preprocess": "imagenet"}, r"model\.preprocess: must be one of"),
        ("[model]\nruntime = 'tflite'\n", {}, r"model\.runtime: must be one of litert, tensorflow"),
        ('[model]\nengine = "remote"\n', {}, r"model\.engine: must be one of local, serve"),
        ("", {"model.address": "auto"}, r"model\.address: finds --engine serve's cluster; add it"),
        ("[[input.streams]]\ncamera = 0\nsource = 'a.mp4'\n", {}, r"input.streams: each is a camera or a source"),
        ("[[input.streams]]\nname = 'a'\n", {}, r"input.streams: each is a camera or a source"),
        ("[[input.streams]]\nsorce = 'a.mp4'\n", {}, r"unknown config key 'input.streams\[0\].sorce'"),
        ("[input]\nstreams = 'a.mp4'\n", {}, r"input.streams: expected a list of tables"),
        (
            "[[input.streams]]\nsource = 'a.mp4'\nname = 'x'\n[[input.streams]]\nsource = 'b.mp4'\nname = 'x'\n",
            {},
            r"input.streams: names must differ",
        ),
        (
            "",
            {"output.path": "a.webm", "output.codec": "h264"},
            r"output\.codec: a \.webm file holds vp9 or av1, not h264",
        ),
        (
            "[output]\npath = 'a.mkv'\ncodec = 'h266'\n",
            {},
            r"output\.codec: must be one of h264, hevc, vp9, av1, mjpeg",
        ),
        ("", {"output.codec": "vp9"}, r"output\.codec: chooses how --output is written; add --output"),
        ("", {"output.path": "a.mp4", "output.crf": 52}, r"output\.crf: h264 takes a CRF from 0 \(best\) to 51"),
        ("", {"output.path": "a.avi", "output.crf": 5}, r"output\.crf: mjpeg has no CRF; its quality is fixed"),
        (
            "",
            {"output.path": "a.webm", "output.preset": "ultrafast"},
            r"output\.preset: vp9 takes realtime, good, best",
        ),
        ("", {"output.path": "a.avi", "output.preset": "fast"}, r"output\.preset: mjpeg has no presets"),
        ("[model\n", {}, r"is not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, toml: str, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_toml(tmp_path, toml), overrides=overrides)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        load_config(tmp_path / "nope.toml")
