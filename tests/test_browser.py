"""The annotated video plays in a real browser: Debian's Chromium, headless, driven by Selenium."""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import SMALL_MODEL, require_asset
from rich.console import Console
from selenium import webdriver

from stream.cli import main
from stream.commands import EXIT_OK

PLAY = """
const [src, done] = arguments;
const video = document.createElement("video");
video.muted = true;
const report = (outcome) => done({
    outcome, width: video.videoWidth, height: video.videoHeight, duration: video.duration,
    error: video.error && `${video.error.code} ${video.error.message}`, readyState: video.readyState,
    audioBytes: video.webkitAudioDecodedByteCount,
});
video.onerror = () => report("error");
video.onloadeddata = () => video.play().then(
    () => { video.ontimeupdate = () => { if (video.currentTime > 0.5) { video.pause(); report("played"); } }; },
    (error) => report(`play() refused: ${error}`),
);
video.src = src;
document.body.appendChild(video);
"""
"""Loads the video muted, plays it for half a second and reports what the element says."""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        # Each of Chromium's requests would print a line into the test's output.
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """`tmp_path` over HTTP on 127.0.0.1, as a page's <video src> loads a file; its address."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="video-server", daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("clip", "suffix"), [("aac_clip", ".mp4"), ("opus_clip", ".webm")])
def test_chromium_plays_the_annotated_video_with_its_sound(
    request: pytest.FixtureRequest,
    browser: webdriver.Chrome,
    served: str,
    tmp_path: Path,
    clip: str,
    suffix: str,
) -> None:
    # given the annotated copy of a 768x432, 10 s clip with sound, in the extension's default codecs
    source = request.getfixturevalue(clip)
    output = tmp_path / f"annotated{suffix}"
    console = Console(file=io.StringIO())
    model = require_asset(SMALL_MODEL)
    code = main(
        ["--source", str(source), "--model", str(model), "--output", str(output), "--headless"], console=console
    )
    assert code == EXIT_OK, console.file.getvalue()

    # when a page plays it
    browser.get(served)
    state = browser.execute_async_script(PLAY, f"{served}/{output.name}")

    # then it plays at the source's size and for the whole clip's length, and the browser decoded its sound
    assert state["outcome"] == "played", state
    assert state["error"] is None
    assert (state["width"], state["height"]) == (768, 432)
    assert state["duration"] == pytest.approx(10.0, abs=0.05)
    assert state["readyState"] >= 2
    assert state["audioBytes"] > 0
