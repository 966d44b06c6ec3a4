"""The run's rate without the live page and with it (`--web`) and 0, 1 or 3 viewers reading every frame sent,
side by side.

python benchmarks/web_viewers.py ../shared/videos/one-by-one-person-detection.mp4 \
    ../shared/models/tflite/mobilenet_v2_1.0_224_quant.tflite --rounds 5 [--viewers 0,1,3]

Each run is a headless run with an annotated video output; the rows take turns, round after round. A viewer is a
WebSocket client in a process of its own (as a browser would be), connected before the first frame and reading
every message until the run ends. Besides the summary's frames per second, each row reports the CPU time the
run's process took a frame (all its threads, start-up included), which the machine's other work moves less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


async def _watch(url: str, count: int) -> list[int]:
    import aiohttp

    async def one(session: aiohttp.ClientSession) -> int:
        while True:
            try:
                socket = await session.ws_connect(url)
                break
            except aiohttp.ClientConnectorError:
                # The run has not started listening yet.
                await asyncio.sleep(0.02)
        frames = 0
        async with socket:
            async for message in socket:
                frames += message.type is aiohttp.WSMsgType.BINARY
        return frames

    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(one(session) for _ in range(count))))


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def _run(video: str, model: str, viewers: int | None, output: Path) -> tuple[float, float, list[int]]:
    """One run: its frames per second (the summary's), the CPU time it took a frame (ms, all its threads) and
    the frames each viewer was sent.
    """
    port = _free_port()
    watcher = None
    if viewers:
        # The viewers wait for the page to listen, so they watch from the run's first frame.
        watcher = subprocess.Popen(
            [sys.executable, __file__, "--viewers-of", f"ws://127.0.0.1:{port}/ws", "--count", str(viewers)],
            stdout=subprocess.PIPE,
            text=True,
        )
    web = ["--web", f"127.0.0.1:{port}"] if viewers is not None else []
    command = [sys.executable, "-m", "stream", "--source", video, "--model", model, "--headless"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.run(
        [*command, "--output", str(output), "--overwrite", *web],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    # Only the run has ended since: the viewers' process is waited for below.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"the run failed: {process.stderr}")
    received = json.loads(watcher.communicate(timeout=60)[0]) if watcher else []
    rate = re.search(r"^ *per second +│ +([\d.]+)", process.stdout, re.MULTILINE)
    written = re.search(r"^ *written +│ +(\d+)", process.stdout, re.MULTILINE)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return float(rate[1]), cpu_s * 1000 / int(written[1]), received


def main() -> None:
    """Measures the rows in turns and prints them as a Markdown table, with the load averages."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?")
    parser.add_argument("model", nargs="?")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--viewers", default="0,1,3", help="the viewer counts of the runs with --web (0,1,3)")
    parser.add_argument("--viewers-of", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.viewers_of:
        print(json.dumps(asyncio.run(_watch(args.viewers_of, args.count))))
        return
    counts = [int(count) for count in args.viewers.split(",")]
    rows = {"no --web": None} | {f"--web, {count} viewer{'' if count == 1 else 's'}": count for count in counts}
    rates: dict[str, list[float]] = {row: [] for row in rows}
    cpu_ms: dict[str, list[float]] = {row: [] for row in rows}
    sent: dict[str, list[int]] = {row: [] for row in rows}
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for row, viewers in rows.items():
                rate, frame_cpu_ms, received = _run(args.video, args.model, viewers, Path(folder) / "annotated.mp4")
                rates[row].append(rate)
                cpu_ms[row].append(frame_cpu_ms)
                sent[row] += received
                loads.append(os.getloadavg())
    rate_without, cpu_without = statistics.median(rates["no --web"]), statistics.median(cpu_ms["no --web"])
    print(
        "| row | frames/s, runs | median | / no --web | CPU ms a frame, median | no --web / this | sent to each viewer |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        rate, cpu = statistics.median(rates[row]), statistics.median(cpu_ms[row])
        runs = ", ".join(f"{value:.1f}" for value in rates[row])
        viewed = ", ".join(map(str, sent[row])) or "-"
        print(
            f"| {row} | {runs} | {rate:.1f} | {rate / rate_without:.2f} | {cpu:.2f} | {cpu_without / cpu:.2f} | {viewed} |"
        )
    print("load averages (1 min) before and after each run:", " ".join(f"{load[0]:.2f}" for load in loads))


if __name__ == "__main__":
    main()
