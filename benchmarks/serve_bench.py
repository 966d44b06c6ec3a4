"""Inference through `mnstream serve` (Ray Serve) against the local engine, side by side in one run.

For each model: the local engine, then the deployment with 1 and 2 replicas fed by 1 and 2 client processes;
batches of 8 (a file's) and of 1 (a live source's). Prints throughput and per-batch latency p50/p95, and Ray's
own memory and CPU at idle. Then whole runs, as a user starts them: `mnstream bench`'s headless row (the video,
every frame, decoded and batched by the pipeline) and its live row (30 fps, capture to display), locally and with
`--engine serve` on one replica that has both cores.

python benchmarks/serve_bench.py --video ../shared/videos/one-by-one-person-detection.mp4 \
    --model ../shared/models/tflite/mobilenet_v2_1.0_224_quant.tflite --model mobilenet_v2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from stream.config import BatchingConfig, ModelConfig
from stream.engines import Engine, create_engine
from stream.recognizer import model_input

CPUS = 2
IDLE_S = 10.0


def frames_of(video: str, count: int, size: tuple[int, int]) -> np.ndarray:
    """The video's first `count` frames, as the model takes them."""
    capture = cv2.VideoCapture(video)
    frames = []
    while len(frames) < count:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(model_input(image, size))
    capture.release()
    return np.stack(frames)


def timed(engine: Engine, frames: np.ndarray, batch: int, *, start_at: float | None = None) -> dict[str, object]:
    """Runs the frames through the engine in batches; the wall-clock span and each batch's latency in ms."""
    engine.infer(frames[:batch])  # warm-up
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    started = time.time()
    latencies = []
    for first in range(0, len(frames) - batch + 1, batch):
        sent = time.perf_counter()
        engine.infer(frames[first : first + batch])
        latencies.append((time.perf_counter() - sent) * 1000)
    return {"started": started, "ended": time.time(), "frames": len(latencies) * batch, "latencies_ms": latencies}


def summary(runs: list[dict[str, object]]) -> dict[str, float]:
    """Frames per second over the runs' common span, and the p50/p95 of their batches' latencies."""
    latencies = sorted(latency for run in runs for latency in run["latencies_ms"])
    span_s = max(run["ended"] for run in runs) - min(run["started"] for run in runs)
    return {
        "fps": sum(run["frames"] for run in runs) / span_s,
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[min(len(latencies) - 1, round(0.95 * len(latencies)))],
    }


def client(address: str, video: str, count: int, batch: int, start_at: float) -> None:
    """One client process: the frames through `--engine serve`, its timings as JSON on standard output."""
    engine = create_engine(ModelConfig(engine="serve", address=address))
    try:
        frames = frames_of(video, count, engine.input_size)
        print(json.dumps(timed(engine, frames, batch, start_at=start_at)))
    finally:
        engine.close()


def through_serve(address: str, video: str, count: int, batch: int, clients: int) -> dict[str, float]:
    """The client processes' summary: they start together once each has connected and prepared its frames."""
    start_at = time.time() + 15
    command = [sys.executable, __file__, "--client", address, "--video", video, "--frames", str(count)]
    processes = [
        subprocess.Popen(
            [*command, "--batch", str(batch), "--start-at", str(start_at)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(clients)
    ]
    runs = []
    for process in processes:
        stdout, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"a client failed: {stdout}"
        runs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert all(run["started"] >= start_at - 0.5 for run in runs), "a client was not ready at the common start"
    return summary(runs)


def pipeline_rows(video: str, *options: str) -> dict[str, float]:
    """`mnstream bench`'s headless row (median of 3) and live row's p95 with these options, in a process of its own."""
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "bench.json"
        command = ["mnstream", "bench", "--source", video, "--rows", "headless,live", "--live-seconds", "10"]
        subprocess.run([*command, "--repeat", "3", *options, "--json", str(results)], check=True, capture_output=True)
        rows = json.loads(results.read_text())["rows"]
    return {"fps": rows["headless"]["frames_per_s"], "live_p95_ms": rows["live"]["live"]["latency_p95_ms"]}


def free_port() -> int:
    """A port nothing listens on, for the HTTP route (8000 may be another program's)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_footprint(root: int) -> tuple[float, float, int]:
    """Resident MiB and CPU % (of one core) over `IDLE_S` of the processes `root` started, and their count."""

    def descendants() -> list[int]:
        found, pending = [], [root]
        while pending:
            for task in Path(f"/proc/{pending.pop()}/task").glob("*"):
                children = [int(pid) for pid in (task / "children").read_text().split()]
                found += children
                pending += children
        return found

    def cpu_ticks(pids: list[int]) -> int:
        return sum(
            sum(map(int, Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[11:13])) for pid in pids
        )

    pids = descendants()
    before = cpu_ticks(pids)
    time.sleep(IDLE_S)
    used_s = (cpu_ticks(pids) - before) / os.sysconf("SC_CLK_TCK")
    page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20
    resident = sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in pids) * page_mib
    return resident, 100 * used_s / IDLE_S, len(pids)


def main() -> None:
    """The benchmark's table, or one client's timings with --client."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True)
    parser.add_argument("--model", action="append", default=[], help="a .tflite file or a Keras model name")
    parser.add_argument("--frames", type=int, default=320)
    parser.add_argument("--client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.video, args.frames, args.batch, args.start_at)
        return
    if not args.model:
        parser.error("name at least one --model")

    import ray

    from stream.serving import SERVE_MAX_WAIT_MS, ServeOptions, Serving

    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    print(f"load average {os.getloadavg()}; {CPUS} CPUs; {args.frames} frames a client")
    print("| model | engine | replicas | clients | batch | frames/s | batch p50 ms | batch p95 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.model:
        model = ModelConfig(model=name)
        local = create_engine(model)
        try:
            frames = frames_of(args.video, args.frames, local.input_size)
            for batch in (8, 1):
                row = summary([timed(local, frames, batch)])
                print(
                    f"| {local.name} | local | - | 1 | {batch} | {row['fps']:.1f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} |"
                )
        finally:
            local.close()
        for replicas in (1, 2):
            # Each replica gets its share of the cores, as the local engine has them all.
            options = ServeOptions(replicas=replicas, cpus_per_replica=CPUS / replicas, http_port=free_port())
            served = ModelConfig(model=name, threads=CPUS // replicas)
            with Serving(served, BatchingConfig(16, SERVE_MAX_WAIT_MS), options, address=address):
                if replicas == 1 and name == args.model[0]:
                    resident, cpu, count = ray_footprint(os.getpid())
                    print(
                        f"Ray at idle, one replica: {count} processes, {resident:.0f} MiB resident, {cpu:.1f}% of a core"
                    )
                for clients, batch in ((1, 8), (2, 8), (1, 1), (2, 1)):
                    row = through_serve(address, args.video, args.frames, batch, clients)
                    print(
                        f"| {name.rsplit('/', 1)[-1]} | serve | {replicas} | {clients} | {batch} | {row['fps']:.1f} | "
                        f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} |",
                        flush=True,
                    )
    print("| model | engine | headless frames/s | live p95 ms |")
    print("|---|---|---|---|")
    for name in args.model:
        local = pipeline_rows(args.video, "--model", name)
        print(f"| {name.rsplit('/', 1)[-1]} | local | {local['fps']:.1f} | {local['live_p95_ms']:.1f} |", flush=True)
        options = ServeOptions(replicas=1, cpus_per_replica=CPUS, http_port=free_port())
        with (
            Serving(
                ModelConfig(model=name, threads=CPUS), BatchingConfig(8, SERVE_MAX_WAIT_MS), options, address=address
            ),
            tempfile.NamedTemporaryFile("w", suffix=".toml") as config,
        ):
            config.write(f'[model]\nengine = "serve"\naddress = "{address}"\n')
            config.flush()
            served = pipeline_rows(args.video, "--config", config.name)
        print(
            f"| {name.rsplit('/', 1)[-1]} | serve | {served['fps']:.1f} ({served['fps'] / local['fps']:.2f}x) | "
            f"{served['live_p95_ms']:.1f} (+{served['live_p95_ms'] - local['live_p95_ms']:.1f}) |",
            flush=True,
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
