"""Decode + resize to the model's input, a frame: OpenCV's read and `model_input` against ways through PyAV.

python benchmarks/decode_ways.py ../shared/videos/one-by-one-person-detection.mp4 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2  # before PyAV: its FFmpeg libraries loaded first make OpenCV's windows hang

from stream.recognizer import model_input

SIZE = (224, 224)


def opencv(video: str, *, resize: bool) -> int:
    """Frames read by OpenCV, each resized to the model's input when `resize`."""
    capture = cv2.VideoCapture(video)
    count = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        if resize:
            model_input(image, SIZE)
        count += 1
    capture.release()
    return count


def pyav(video: str, *, threaded: bool, convert: str) -> int:
    """Frames decoded by PyAV, each converted as `convert` says (nothing when empty)."""
    import av

    count = 0
    with av.open(video) as container:
        stream = container.streams.video[0]
        if threaded:
            stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if convert in ("BILINEAR", "AREA"):
                # One swscale call from the decoder's YUV to the model's size and RGB.
                frame.reformat(width=SIZE[0], height=SIZE[1], format="rgb24", interpolation=convert).to_ndarray()
            elif convert == "bgr":
                model_input(frame.to_ndarray(format="bgr24"), SIZE)
            elif convert == "planes":
                model_input(cv2.cvtColor(frame.to_ndarray(format="yuv420p"), cv2.COLOR_YUV2BGR_I420), SIZE)
            count += 1
    return count


WAYS: dict[str, Callable[[str], int]] = {
    "OpenCV read only (decode + BGR)": lambda video: opencv(video, resize=False),
    "PyAV threaded decode only (YUV, no conversion)": lambda video: pyav(video, threaded=True, convert=""),
    "**OpenCV read + model_input (today)**": lambda video: opencv(video, resize=True),
    "PyAV 1 thread, YUV -> 224x224 RGB in one swscale step, bilinear": lambda video: pyav(
        video, threaded=False, convert="BILINEAR"
    ),
    "PyAV threaded, the same, bilinear": lambda video: pyav(video, threaded=True, convert="BILINEAR"),
    "PyAV threaded, the same, area": lambda video: pyav(video, threaded=True, convert="AREA"),
    "PyAV threaded, full-size BGR (what the overlay needs) + model_input": lambda video: pyav(
        video, threaded=True, convert="bgr"
    ),
    "PyAV threaded, YUV planes -> OpenCV's BGR + model_input": lambda video: pyav(
        video, threaded=True, convert="planes"
    ),
}


def main() -> None:
    """Times each way, taking turns, and prints a table of medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("video")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    wall_ms: dict[str, list[float]] = {name: [] for name in WAYS}
    cpu_ms: dict[str, list[float]] = {name: [] for name in WAYS}
    for _ in range(args.runs):
        # The ways take turns, so that a load that drifts weighs on each alike.
        for name, way in WAYS.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            frames = way(args.video)
            wall_ms[name].append((time.perf_counter() - started) * 1000 / frames)
            cpu_ms[name].append((time.process_time() - started_cpu) * 1000 / frames)
    print("| way | wall ms a frame (median) | CPU ms a frame (median, all threads) | wall, each run |")
    print("|---|---|---|---|")
    for name in WAYS:
        runs = ", ".join(f"{ms:.2f}" for ms in wall_ms[name])
        print(f"| {name} | {statistics.median(wall_ms[name]):.2f} | {statistics.median(cpu_ms[name]):.2f} | {runs} |")


if __name__ == "__main__":
    main()
