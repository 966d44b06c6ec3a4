"""The live page (`--web`): a real run on seven paced MJPEG streams of the shared video, watched by headless
Chromium, a real HTTP client, a script following the server-sent events and a viewer that never reads.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import SMALL_MODEL, MjpegServer, jpeg_frames, require_asset, run_cli, start_mnstream, wait_for
from PIL import Image
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait

from stream.commands import EXIT_OK, EXIT_USAGE
from stream.events import FramesDropped, RunEnded, SourceBack, SourceLost, StreamEnded
from stream.types import Frame, Label, Prediction, SourceInfo, SourceKind
from stream.web.address import WebAddress
from stream.web.board import Board
from stream.web.sink import WebSink

TOKEN = "correct-horse-battery-staple"
STREAMS = ["<script>window.injected = 1</script>", *(f"camera {number}" for number in range(1, 7))]
"""Seven streams, one more than a browser opens connections to one host; the first named to test escaping."""
SCREENSHOT = os.environ.get("MNSTREAM_WEB_SCREENSHOT")
"""Where the page test saves its screenshot, when set (docs/web.jpg for the README)."""

TILES = """
return [...document.querySelectorAll(".tile")].map((tile) => ({
    name: tile.querySelector(".name").textContent,
    frame: tile.dataset.frame === undefined ? null : Number(tile.dataset.frame),
    label: tile.querySelector(".shown .label").textContent,
    state: tile.querySelector(".state").textContent,
    bars: tile.querySelectorAll(".bars li").length,
    rect: tile.querySelector(".picture").getBoundingClientRect().toJSON(),
}));
"""
"""Every tile's name, frame, label, state, bar count and picture's place, read in one go."""
CHANGES = """
return [...document.querySelectorAll("#changes tr")].map((row) => [...row.cells].map((cell) => cell.textContent));
"""


@dataclass
class Run:
    """A run serving its page: its address (without the token), its JSON lines and what it printed."""

    process: subprocess.Popen[str]
    jsonl: Path
    streams: MjpegServer
    url: str = ""
    stderr: list[str] = field(default_factory=list)

    def lines(self) -> list[dict[str, object]]:
        """The JSON lines written so far, whole lines only."""
        text = self.jsonl.read_text() if self.jsonl.exists() else ""
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def get(self, path: str, *, token: str | None = TOKEN, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
        """A request to the run's page, with the token as a header unless None."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return _request(self.port, path, headers, method=method)

    def stats(self) -> dict[str, object]:
        return json.loads(self.get("/stats")[1])

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, video_path: Path) -> Iterator[Run]:
    """A run on seven live streams at 10 frames a second, showing each frame's own top-1 (no smoothing, so
    the label changes often), serving its page on a free port of 127.0.0.1 with a token.
    """
    folder = tmp_path_factory.mktemp("web")
    with MjpegServer(jpeg_frames(video_path, count=100), parts=10**9, interval_s=0.1) as streams:
        config = folder / "streams.toml"
        config.write_text(
            "".join(
                f"[[input.streams]]\nsource = {json.dumps(streams.url)}\nname = {json.dumps(name)}\n"
                for name in STREAMS
            )
        )
        jsonl = folder / "frames.jsonl"
        process = start_mnstream(
            *("--config", config, "--model", require_asset(SMALL_MODEL), "--headless", "--half-life", "0"),
            *("--jsonl", jsonl, "--web", "127.0.0.1:0", "--web-token", TOKEN, "--reconnect", "1"),
            stdout=subprocess.DEVNULL,
        )
        run = Run(process, jsonl, streams)
        threading.Thread(target=lambda: run.stderr.extend(process.stderr), daemon=True).start()
        try:
            wait_for(lambda: any("watch it in a browser" in line for line in run.stderr), process)
            printed = next(line for line in run.stderr if "watch it in a browser" in line)
            run.url = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", printed)[1]
            yield run
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            process.wait(60)


@pytest.fixture(scope="module")
def page(run: Run, browser: webdriver.Chrome) -> webdriver.Chrome:
    """The run's page open in Chromium, every tile showing a frame."""
    browser.set_window_size(1600, 1200)
    browser.get(f"{run.url}/?token={TOKEN}")
    WebDriverWait(browser, 120).until(lambda _: _playing(browser) == len(STREAMS))
    return browser


def _playing(browser: webdriver.Chrome) -> int:
    return sum(tile["frame"] is not None for tile in browser.execute_script(TILES))


def _readable(label: str | None) -> str:
    return "nothing" if label is None else label.replace("_", " ")


def _shown(lines: list[dict[str, object]]) -> dict[tuple[str, int], str]:
    """(stream, frame) -> the shown top-1 as the page writes it."""
    return {(line["stream"], line["frame"]): _readable(line["top1"] and line["top1"][1]) for line in lines}


def _is_a_change(
    lines: list[dict[str, object]], stream: str, frame: int, label: str | None, *, by_id: bool = False
) -> bool:
    """Whether the JSON lines show `label` (as the page writes it, or its class id) first at that frame of that
    stream; a stream's first label is a change too.
    """

    def shown(line: dict[str, object]) -> str | None:
        top1 = line["top1"]
        return (top1 and top1[0]) if by_id else _readable(top1 and top1[1])

    labels = [(line["frame"], shown(line)) for line in lines if line["stream"] == stream]
    positions = [position for position, (index, _) in enumerate(labels) if index == frame]
    assert positions, f"frame {frame} of {stream} is not in the JSON lines"
    position = positions[0]
    return labels[position][1] == label and (position == 0 or labels[position - 1][1] != label)


def test_without_its_token_the_server_refuses(run: Run) -> None:
    # when a real HTTP client asks without the token, with a wrong one, and with the right one in the URL
    refused = [run.get(path, token=None)[0] for path in ("/", "/stats", "/events", "/streams/0/latest.jpg")]
    wrong = run.get("/stats", token="guess")[0]
    status, body, headers = run.get(f"/?token={TOKEN}", token=None)

    # then only the right token opens the page, which keeps it in a cookie for its own requests
    assert refused == [401] * 4
    assert wrong == 401
    assert status == 200 and b"<title>mnstream</title>" in body
    assert f"={TOKEN}" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [("GET", "/nothing-here", 404), ("GET", "/streams/99/latest.jpg", 404), ("POST", "/stats", 405), ("PUT", "/", 405)],
)
def test_unknown_paths_are_not_found_and_only_get_is_served(run: Run, method: str, path: str, expected: int) -> None:
    assert run.get(path, method=method)[0] == expected


def test_a_stream_the_run_does_not_have_is_named_as_such_not_as_one_without_a_frame_yet(run: Run) -> None:
    status, body, _ = run.get("/streams/99/latest.jpg")
    assert status == 404
    assert body.decode() == "this run has no stream 99; /stats lists its streams\n"


def test_every_one_of_seven_streams_plays_on_one_page(run: Run, page: webdriver.Chrome) -> None:
    # given every tile showing a frame
    before = {tile["name"]: tile["frame"] for tile in page.execute_script(TILES)}
    first = Image.open(io.BytesIO(page.get_screenshot_as_png())).convert("RGB")

    # when every tile has shown a newer frame, without a reload
    WebDriverWait(page, 120).until(
        lambda _: all(tile["frame"] > before[tile["name"]] for tile in page.execute_script(TILES))
    )
    tiles = page.execute_script(TILES)
    second = Image.open(io.BytesIO(page.get_screenshot_as_png())).convert("RGB")
    if SCREENSHOT:
        second.save(SCREENSHOT, quality=85)

    # then seven tiles, all live with their top-k bars, and every tile's picture has changed between the shots
    assert [tile["name"] for tile in tiles] == STREAMS
    assert {tile["state"] for tile in tiles} == {"live"}
    assert all(tile["bars"] == 5 for tile in tiles)
    scale = first.width / page.execute_script("return window.innerWidth")
    for tile in tiles:
        rect = tile["rect"]
        box = tuple(round(value * scale) for value in (rect["x"], rect["y"], rect["right"], rect["bottom"]))
        assert box[3] <= first.height, f"{tile['name']} is below the window"
        pictures = [np.asarray(shot.crop(box), np.int16) for shot in (first, second)]
        assert np.abs(pictures[0] - pictures[1]).max() > 64, f"{tile['name']}'s picture did not change"


def test_the_labels_on_the_page_are_those_of_the_json_lines(run: Run, page: webdriver.Chrome) -> None:
    # when the page is read, then the JSON lines of the frames it shows
    tiles = page.execute_script(TILES)
    shown = _shown(run.lines())

    # then each tile's label is its frame's shown top-1
    assert [tile["label"] for tile in tiles] == [shown[tile["name"], tile["frame"]] for tile in tiles]


def test_the_change_log_grows_with_the_label_changes(run: Run, page: webdriver.Chrome) -> None:
    # given the log as it is, with at least each stream's first label
    WebDriverWait(page, 120).until(lambda _: len(page.execute_script(CHANGES)) >= len(STREAMS))
    logged = len(page.execute_script(CHANGES))

    # when it has grown by ten
    WebDriverWait(page, 120).until(lambda _: len(page.execute_script(CHANGES)) >= logged + 10)
    rows = page.execute_script(CHANGES)

    # then each row, newest first, is a change of a stream's shown label in its JSON lines, at that frame
    lines = run.lines()
    assert {stream for _, stream, *_ in rows} == set(STREAMS)
    for at, stream, frame, label, score in rows:
        assert re.fullmatch(r"\d{1,2}:\d{2}:\d{2}( [AP]M)?", at), at
        assert _is_a_change(lines, stream, int(frame), label), (stream, frame, label)
        assert 0 < float(score) <= 1


def test_names_and_labels_show_as_text(run: Run, page: webdriver.Chrome) -> None:
    # then the stream called <script> is its name on the page, and nothing of it ran
    tiles = page.execute_script(TILES)
    assert tiles[0]["name"] == STREAMS[0]
    assert page.execute_script("return window.injected") is None
    assert page.execute_script("return document.scripts.length") == 1


def test_a_script_follows_the_label_changes(run: Run) -> None:
    # when a script follows the server-sent events until it has twenty changes
    connection = http.client.HTTPConnection("127.0.0.1", run.port, timeout=60)
    connection.request("GET", "/events", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    events = []
    while len(events) < 20:
        line = response.readline().decode()
        if line.startswith("data: "):
            events.append(json.loads(line.removeprefix("data: ")))
    connection.close()

    # then they are numbered in order, and each is a change of its stream's label in the JSON lines
    assert response.headers["Content-Type"] == "text/event-stream"
    assert [event["seq"] for event in events] == sorted({event["seq"] for event in events})
    lines = run.lines()
    for event in events:
        label = event["label"] and event["label"]["id"]
        assert _is_a_change(lines, event["stream"], event["frame"], label, by_id=True), event


def test_the_newest_annotated_frame_as_a_jpeg(run: Run) -> None:
    # given a stream that has shown a frame (run alone, this test may come before its first)
    wait_for(lambda: run.get("/streams/3/latest.jpg")[0] == 200, run.process)

    # when its newest frame is asked for
    status, body, headers = run.get("/streams/3/latest.jpg")

    # then it is a JPEG of the stream's size, of a frame that the JSON lines have
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (216, 384, 3)
    assert (STREAMS[3], int(headers["X-Frame-Index"])) in _shown(run.lines())


def test_a_viewer_that_stops_reading_holds_up_neither_the_run_nor_its_end(run: Run, page: webdriver.Chrome) -> None:
    # given a viewer that opens the WebSocket and never reads, with a small receive buffer
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", run.port))
    address = f"127.0.0.1:{stalled.getsockname()[1]}"
    key = base64.b64encode(os.urandom(16)).decode()
    stalled.sendall(
        f"GET /ws?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    skipped = lambda: next((v["skipped"] for v in run.stats()["viewers"] if v["address"] == address), 0)
    try:
        # when the server has had to skip frames for it
        wait_for(lambda: skipped() > 50, run.process)
        lines, frame = len(run.lines()), page.execute_script(TILES)[0]["frame"]

        # then the run goes on, as does the page of a viewer that reads
        wait_for(lambda: len(run.lines()) > lines + 10 * len(STREAMS), run.process)
        wait_for(lambda: page.execute_script(TILES)[0]["frame"] > frame + 10, run.process)

        # and once the streams end, the run ends too, with the stalled viewer still connected
        run.streams.__exit__(None, None, None)
        assert run.process.wait(60) == EXIT_OK, "".join(run.stderr)
    finally:
        stalled.close()
    WebDriverWait(page, 30).until(lambda _: {tile["state"] for tile in page.execute_script(TILES)} == {"ended"})


def test_a_port_in_use_is_one_line_and_exit_2_before_any_frame_is_read(
    capsys: pytest.CaptureFixture[str], video_path: Path
) -> None:
    # given a port taken by another program
    with (
        socket.create_server(("127.0.0.1", 0)) as taken,
        MjpegServer(jpeg_frames(video_path, count=1), parts=10, interval_s=0.1) as stream,
    ):
        port = taken.getsockname()[1]

        # when a run is asked to serve its page there
        code, _ = run_cli("--source", stream.url, "--model", require_asset(SMALL_MODEL), "--headless", "--web", port)

    # then it says so in one line and stops before it has even connected to its source
    assert code == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"mnstream: error: --web 127.0.0.1:{port}: the port is in use; choose another port or stop what listens there\n"
    )
    assert stream.connections == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--web", "localhost:http"], "--web: is [HOST:]PORT with a port from 0 to 65535, e.g. 8080 or 0.0.0.0:8080"),
        (["--web", "70000"], "--web: is [HOST:]PORT with a port from 0 to 65535, e.g. 8080 or 0.0.0.0:8080"),
        (["--web-fps", "5"], "--web-fps: sets how --web serves the page; add --web"),
        (["--web", "8080", "--web-fps", "0"], "--web-fps: must be > 0 and <= 60"),
        (["--web-token", "secret"], "--web-token: sets how --web serves the page; add --web"),
    ],
)
def test_options_that_make_no_page_are_refused(
    capsys: pytest.CaptureFixture[str], video_path: Path, flags: list[str], message: str
) -> None:
    code, _ = run_cli("--source", video_path, "--headless", *flags)
    assert code == EXIT_USAGE
    assert capsys.readouterr().err == f"mnstream: error: {message}\n"


def test_still_images_are_printed_not_served(capsys: pytest.CaptureFixture[str], assets: Path) -> None:
    code, _ = run_cli("--source", assets / "images" / "parrot.jpg", "--web", "0")
    assert code == EXIT_USAGE
    assert capsys.readouterr().err == (
        "mnstream: error: --web shows video streams; for still images the top-k is printed, drop --web\n"
    )


def test_without_aiohttp_the_page_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], video_path: Path
) -> None:
    # given aiohttp not installed (None in sys.modules makes its import fail), and the page not imported yet
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    for module in ("stream.web.sink", "stream.web.server"):
        monkeypatch.delitem(sys.modules, module, raising=False)

    # when a run asks for the page
    code, _ = run_cli("--source", video_path, "--headless", "--web", "0")

    # then
    assert code == EXIT_USAGE
    assert capsys.readouterr().err == "mnstream: error: --web needs aiohttp: pip install 'mnstream[web]'\n"


@contextlib.contextmanager
def _page_on(host: str) -> Iterator[WebSink]:
    """A page of no run, served on a free port of the host."""
    sink = WebSink(WebAddress(host, 0), fps=10)
    try:
        yield sink
    finally:
        sink.close()


def _request(
    port: int, path: str, headers: dict[str, str] | None = None, *, method: str = "GET"
) -> tuple[int, bytes, dict[str, str]]:
    """A request to 127.0.0.1 with a real HTTP client: the status, the body (none after a WebSocket's 101) and the
    headers, whatever the status.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = b"" if response.status == 101 else response.read()
        return response.status, body, dict(response.headers)
    finally:
        connection.close()


def _status(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    return _request(port, path, headers)[0]


def test_on_any_address_but_the_loopback_a_token_is_made_up_and_required() -> None:
    # given a page served on every address, without a token given
    with _page_on("0.0.0.0") as page:
        port, token = re.fullmatch(r"http://[^:/]+:(\d+)/\?token=([\w-]+)", page.url).groups()

        # then the printed URL carries a long random token, which every request needs
        assert len(token) >= 32
        assert _status(int(port), "/stats") == 401
        assert _status(int(port), f"/stats?token={token}") == 200


def test_without_a_token_only_requests_to_the_loopback_by_name_and_from_the_page_itself_are_served() -> None:
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    upgrade["Sec-WebSocket-Key"] = base64.b64encode(os.urandom(16)).decode()
    # given a page on the loopback address, which asks for no token
    with _page_on("127.0.0.1") as page:
        port = int(re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", page.url)[1])

        # then this machine reads it; a site whose name resolves to 127.0.0.1 does not, nor may another site's
        # page open its WebSocket
        assert _status(port, "/stats") == 200
        assert _status(port, "/stats", {"Host": "attacker.example"}) == 403
        assert _status(port, "/ws", {**upgrade, "Origin": "http://attacker.example"}) == 403
        assert _status(port, "/ws", {**upgrade, "Origin": f"http://127.0.0.1:{port}"}) == 101


def _written(board: Board, index: int, label: str) -> None:
    """A frame of stream 0 whose shown label is `label`, written to the board as the sink writes it."""
    image = np.full((48, 64, 3), index, np.uint8)
    class_index = {"tabby": 281, "beagle": 162}[label]
    shown = Label(class_index, f"n{class_index:08d}", label, 0.75)
    board.write(
        Frame(0, index, image, image, time.monotonic()),
        Prediction(0, index, (shown,), inference_ms=1.0, queued_ms=1.0, batch_size=1, smoothed=shown),
    )


def test_the_board_follows_a_streams_state_its_label_changes_and_encodes_a_frame_once() -> None:
    # given a board of one live stream
    board = Board()
    board.show([SourceInfo(0, "door", SourceKind.URL, 64, 48, fps=None)])
    states = []

    def state() -> None:
        stream = board.stats()["streams"][0]
        states.append((stream["state"], stream.get("frame"), stream["dropped"]))

    # when its frames come, its source is lost with a frame still queued, comes back, drops, and ends
    state()
    _written(board, 0, "tabby")
    state()
    board.notify(SourceLost(0, time.monotonic()))
    _written(board, 1, "tabby")
    state()
    board.notify(SourceBack(0, time.monotonic(), 1.0))
    board.notify(FramesDropped(0, 3))
    _written(board, 2, "beagle")
    state()
    first, again = board.jpeg(0), board.jpeg(0)
    board.notify(StreamEnded(0, time.monotonic()))
    _written(board, 3, "tabby")
    board.notify(RunEnded(time.monotonic()))
    state()

    # then the page reads each state as it was, the changes of label, and one JPEG of the frame however often asked
    assert states == [
        ("starting", None, 0),
        ("live", 0, 0),
        ("reconnecting", 1, 0),
        ("live", 2, 3),
        ("ended", 3, 3),
    ]
    assert board.stats()["run"] == "ended"
    assert [(change.frame, change.label.name) for change in board.changes_after(0)] == [
        (0, "tabby"),
        (2, "beagle"),
        (3, "tabby"),
    ]
    assert [change.seq for change in board.changes_after(1)] == [2, 3]
    assert first[0].frame == 2 and again[1] is first[1]
    assert cv2.imdecode(np.frombuffer(first[1], np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)
    assert board.jpeg(0)[1] is not first[1]
    assert board.jpeg(7) is None
