"""Shared fixtures: the read-only assets in ../shared, an offline Keras cache, scripted sources and a display."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import ASSETS, IN_CI, ONSET_S, mobilenet_features, require_asset, write_clip_with_audio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from stream.recognizer import model_input

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def pytest_configure(config: pytest.Config) -> None:
    # Keras reads KERAS_HOME once, at import: point it at a writable copy of the shared cache before any test
    # imports it, so weights="imagenet" takes the same code path as for a user with a network.
    if (ASSETS / "keras_home").is_dir():
        keras_home = Path(tempfile.mkdtemp(prefix="mnstream-keras-home-"))
        shutil.copytree(ASSETS / "keras_home", keras_home, dirs_exist_ok=True)
        for path in [keras_home, *keras_home.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        os.environ["KERAS_HOME"] = str(keras_home)
    # Keras models are compiled to LiteRT and cached: never in the user's cache, and tests that need an empty or
    # a broken cache point MNSTREAM_CACHE at their own folder.
    os.environ["MNSTREAM_CACHE"] = tempfile.mkdtemp(prefix="mnstream-cache-")


@pytest.fixture(scope="session")
def assets() -> Path:
    return require_asset(".")


@pytest.fixture(scope="session")
def keras_home() -> Path:
    """The writable copy of the shared Keras cache that KERAS_HOME points at."""
    require_asset("keras_home/models")
    return Path(os.environ["KERAS_HOME"])


@pytest.fixture(scope="session")
def video_path() -> Path:
    return require_asset("videos/one-by-one-person-detection.mp4")


@pytest.fixture(scope="session")
def aac_clip(tmp_path_factory: pytest.TempPathFactory, video_path: Path) -> Path:
    """The shared video's first 100 frames (10 s) in H.264, with a stereo AAC tone from `ONSET_S`, in an MP4."""
    path = tmp_path_factory.mktemp("clips") / "aac.mp4"
    return write_clip_with_audio(path, video_path, frames=100, audio_codec="aac", onset_s=ONSET_S)


@pytest.fixture(scope="session")
def opus_clip(tmp_path_factory: pytest.TempPathFactory, video_path: Path) -> Path:
    """The same in VP9 and Opus, in a WebM."""
    path = tmp_path_factory.mktemp("clips") / "opus.webm"
    return write_clip_with_audio(path, video_path, frames=100, audio_codec="libopus", onset_s=ONSET_S)


@pytest.fixture(scope="session")
def reliable_photos() -> list[tuple[Path, str]]:
    """(photo, expected Keras top-1 name) for every row of the "Reliable" table in images/EXPECTED.md."""
    text = require_asset("images/EXPECTED.md").read_text()
    section = text.split("## Reliable", 1)[1].split("\n## ", 1)[0]
    photos = []
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.search(r"\.(bmp|jpg|png)", cells[0]):
            continue
        name = cells[1].split(" (")[0].replace(" ", "_")
        photos += [(require_asset(f"images/{file.strip()}"), name) for file in cells[0].split(",")]
    assert len(photos) >= 8, f"EXPECTED.md's reliable table parsed to only {photos}"
    return photos


@pytest.fixture(scope="session")
def fine_tuned_model(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> tuple[Path, Path, dict[str, str]]:
    """A user's model: MobileNet v1 0.25 with a new three-class head trained on three photos, ending in logits."""
    import keras

    photos = {"parrot.jpg": "parrot", "hot_dog.jpg": "hot dog", "missvickie_potato_chips.bmp": "crisps"}
    names = sorted(set(photos.values()))
    images, targets = [], []
    for file, name in photos.items():
        image = model_input(cv2.imread(str(assets / "images" / file)), (128, 128))
        images += [image, image[:, ::-1]]
        targets += [names.index(name)] * 2
    base = keras.Model(*mobilenet_features())
    base.trainable = False
    inputs = keras.Input((128, 128, 3))
    features = keras.layers.Flatten()(base(keras.applications.mobilenet.preprocess_input(inputs)))
    logits = keras.layers.Dense(len(names))(features)
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(np.stack(images).astype(np.float32), np.array(targets), epochs=40, verbose=0)

    folder = tmp_path_factory.mktemp("fine_tuned")
    model_path = folder / "crisps_or_not.keras"
    model.save(model_path)
    labels_path = folder / "labels.txt"
    labels_path.write_text("\n".join(names) + "\n")
    return model_path, labels_path, photos


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """An X display: the one already set, or a private Xvfb (required in CI)."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        if IN_CI:
            pytest.fail("Xvfb is not installed; .ci/run installs the xvfb package")
        pytest.skip("no DISPLAY and no Xvfb")
    number = 90 + os.getpid() % 100
    server = subprocess.Popen([xvfb, f":{number}", "-screen", "0", "1280x720x24", "-nolisten", "tcp"])
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        assert server.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.05)
    os.environ["DISPLAY"] = f":{number}"
    try:
        yield os.environ["DISPLAY"]
    finally:
        del os.environ["DISPLAY"]
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium, from Debian's packages: the driver is named, so Selenium Manager downloads nothing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        message = f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # As root in a container: no sandbox, and /dev/shm may be tiny.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
