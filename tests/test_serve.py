"""`mnstream serve` and `--engine serve` on a real Ray cluster of this machine, started once for the module."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray
import requests
from helpers import (
    BLOCK_TENSORFLOW,
    classify,
    free_port,
    has_a_line,
    read_video,
    require_asset,
    run_cli,
    run_mnstream,
    start_mnstream,
    top1,
    wait_for,
    write_video,
)
from ray import serve
from ray.serve.exceptions import RayServeException

from stream.config import BatchingConfig, ModelConfig
from stream.deployment import APP_NAME, MAX_BODY_BYTES, ROUTE, ReplicaStats
from stream.engines import create_engine
from stream.engines.remote import MESSAGE_BYTES, RemoteEngine
from stream.serving import ServeOptions, Serving

V2_INT8 = "models/tflite/mobilenet_v2_1.0_224_quant.tflite"
EXIT_TIMEOUT_S = 300
"""A hang guard for the subprocesses, not a speed bound."""
PAGE_BYTES = 4096
"""The least a Linux pipe holds."""
SERVED_BATCH_SIZE = 32
"""The largest batch of the module's deployment: 32 frames of 224x224, more than one gRPC call carries."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray cluster of two CPUs without its dashboard; its address, as clients give it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def model() -> Path:
    return require_asset(V2_INT8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, video_path: Path) -> list[Path]:
    """Two different videos: the shared video's frames 0-89 and 90-179."""
    frames, _ = read_video(video_path)
    folder = tmp_path_factory.mktemp("serve_clips")
    return [write_video(folder / f"clip{part}.avi", frames[part * 90 : (part + 1) * 90], fps=10) for part in (0, 1)]


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def served(cluster: str, model: Path, http_port: int) -> Iterator[Serving]:
    """The application deployed from this process: one replica of the int8 MobileNetV2, batches of up to
    `SERVED_BATCH_SIZE` frames, HTTP on `http_port`.

    The tests that start `mnstream serve` come before the first that takes this: a serve command on this cluster
    replaces the application, and deletes it as it ends.
    """
    options = ServeOptions(replicas=1, http_port=http_port)
    with Serving(
        ModelConfig(model=str(model)), BatchingConfig(batch_size=SERVED_BATCH_SIZE), options, address=cluster
    ) as serving:
        yield serving


def _start_run_without_tensorflow(*args: object, stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """`mnstream ARGS` in its own process, where TensorFlow cannot be imported."""
    run_main = BLOCK_TENSORFLOW + "from stream.__main__ import main\nsys.exit(main())\n"
    return subprocess.Popen(
        [sys.executable, "-c", run_main, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True
    )


def _short_pipe() -> tuple[int, int]:
    """A pipe that holds one page: a run writing its JSON lines into it stalls a few lines on until they are read."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PAGE_BYTES)
    return read_end, write_end


def _read_to_the_end(read_end: int) -> str:
    with open(read_end, encoding="utf-8") as pipe:
        return pipe.read()


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _application_status() -> str | None:
    """The status of the mnstream application, None while there is none (or no Serve at all)."""
    try:
        application = serve.status().applications.get(APP_NAME)
    except RayServeException:
        return None
    return None if application is None else application.status


def _stats() -> ReplicaStats:
    return serve.get_app_handle(APP_NAME).stats.remote().result(timeout_s=60)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--replicas", "2", "--max-replicas", "3"], "--replicas fixes the count, --min-replicas/--max-replicas"),
        (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas must not exceed --max-replicas"),
        (["--replicas", "0"], "--replicas and --max-replicas must be >= 1"),
        (["--cpus-per-replica", "0"], "--cpus-per-replica must be > 0"),
        (["--model", "missing.tflite"], "model file missing.tflite does not exist; check --model"),
    ],
)
def test_serve_refuses_bad_options_before_it_starts_ray(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # when `mnstream serve` is given options that cannot work
    # (an address where nothing listens: were they let through, it would fail there instead of serving)
    code, _ = run_cli("serve", "--model", require_asset(V2_INT8), "--address", f"127.0.0.1:{free_port()}", *options)

    # then it says which, in one line, before any cluster starts
    [line] = capsys.readouterr().err.splitlines()
    assert code == 2
    assert line.startswith(f"mnstream: error: {message}")


@pytest.mark.parametrize(
    ("options", "own_cluster_cpus", "cpus"),
    [
        (ServeOptions(), 2.0, 2.0),  # one replica on the cluster serve started: all of it
        (ServeOptions(replicas=2), 4.0, 2.0),
        (ServeOptions(replicas=3), 2.0, 1.0),  # never below one
        (ServeOptions(max_replicas=4), 8.0, 1.0),  # autoscaled: the count varies
        (ServeOptions(), None, 1.0),  # a cluster it joined: its nodes vary
        (ServeOptions(cpus_per_replica=0.5), 8.0, 0.5),  # given
    ],
)
def test_a_replica_gets_its_share_of_a_cluster_serve_started_and_one_cpu_elsewhere(
    options: ServeOptions, own_cluster_cpus: float | None, cpus: float
) -> None:
    assert options.with_cpus_of(own_cluster_cpus).cpus_per_replica == cpus


def test_serve_on_an_http_port_in_use_is_one_line_and_exit_2_before_ray_starts(model: Path) -> None:
    # given a port something on this machine listens on
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]

        # when `mnstream serve` would start its cluster with its HTTP route there
        result = run_mnstream("serve", "--model", model, "--http-port", port, timeout_s=EXIT_TIMEOUT_S)

    # then it says so in one line
    assert result.returncode == 2, result.stderr
    message = f"--http-port {port}: 127.0.0.1:{port} is in use; choose another port or stop what listens there"
    assert result.stderr.splitlines() == [f"mnstream: error: {message}"]


def test_a_run_without_a_deployment_is_one_line_and_exit_2(cluster: str, clips: list[Path]) -> None:
    # given a cluster that serves nothing yet
    # when a run is sent to it
    run = start_mnstream("--source", clips[0], "--engine", "serve", "--address", cluster, "--headless")
    _, stderr = run.communicate(timeout=EXIT_TIMEOUT_S)

    # then it says so in one line, naming the command that would serve a model
    assert run.returncode == 2
    assert stderr.strip().splitlines() == [
        (
            f"mnstream: error: the Ray cluster at {cluster} serves no {APP_NAME} model; start one with "
            f"`mnstream serve --address {cluster} --model ...`"
        )
    ]


def test_a_run_to_an_unreachable_cluster_is_one_line_and_exit_2(clips: list[Path]) -> None:
    # given an address where nothing listens
    address = f"127.0.0.1:{free_port()}"

    # when a run is sent there
    run = start_mnstream("--source", clips[0], "--engine", "serve", "--address", address, "--headless")
    _, stderr = run.communicate(timeout=EXIT_TIMEOUT_S)

    # then it fails at once with one line
    assert run.returncode == 2
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"mnstream: error: cannot reach the Ray cluster at {address}")


def test_serve_of_a_model_its_replicas_cannot_load_is_one_line(cluster: str, tmp_path: Path, http_port: int) -> None:
    # given a file named like a model that is none
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a model")

    # when it is served
    server = run_mnstream(
        "serve", "--address", cluster, "--model", broken, "--http-port", http_port, timeout_s=EXIT_TIMEOUT_S
    )

    # then the replicas' failure ends it with one line that says why, and nothing stays deployed
    lines = server.stderr.strip().splitlines()
    assert len(lines) == 1, server.stderr
    [line] = lines
    assert server.returncode == 1
    assert line.startswith("mnstream: error: the replicas could not start: ")
    assert "broken.tflite is not a TensorFlow Lite model" in line
    assert _application_status() is None


def test_two_runs_share_one_served_model_and_both_get_every_frame(
    cluster: str, clips: list[Path], model: Path, http_port: int
) -> None:
    # given `mnstream serve` on the cluster, whose batches wait to fill with what both clients keep in flight (two
    # calls of 8 each): room for one client's alone would fill them with its own frames, and a short wait would let
    # the clients take turns, each one's calls running while the other's form the next batch
    server = start_mnstream(
        "serve", "--address", cluster, "--model", model, "--batch-size", 32, "--max-wait-ms", 1000,
        "--http-port", http_port,
    )  # fmt: skip
    try:
        wait_for(lambda: _application_status() == "RUNNING", server, timeout_s=EXIT_TIMEOUT_S)

        # when two runs on different videos, without TensorFlow or a model file, send their frames to it at once:
        # each writes its JSON lines into a pipe that holds a few, so it stalls until both have started, and then
        # both go on together however far apart their processes started
        pipes = [_short_pipe() for _ in clips]
        runs = []
        for clip, (_, write_end) in zip(clips, pipes, strict=True):
            run_options = ["--source", clip, "--engine", "serve", "--address", cluster, "--headless", "--jsonl", "-"]
            runs.append(_start_run_without_tensorflow(*run_options, stdout=write_end))
            os.close(write_end)
        readers = [read_end for read_end, _ in pipes]
        for read_end in readers:
            assert select.select([read_end], [], [], EXIT_TIMEOUT_S)[0], f"no JSON line in {EXIT_TIMEOUT_S} s"
        with ThreadPoolExecutor(len(readers)) as pool:
            outputs = list(pool.map(_read_to_the_end, readers))
        results = [run.communicate(timeout=EXIT_TIMEOUT_S) for run in runs]
        stats = _stats()
    finally:
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=EXIT_TIMEOUT_S)

    # then each run has every frame of its video, in order, labelled
    for run, (_, stderr_of_run), output in zip(runs, results, outputs, strict=True):
        assert run.returncode == 0, stderr_of_run
        lines = _lines(output)
        assert [line["frame"] for line in lines] == list(range(90))
        assert all(line["top_k"] and line["top1"] for line in lines)
    # and the replica inferred both videos (and each run's warm-up frame), some batches holding frames of both
    assert sorted(stats.frames_by_client.values()) == [91, 91]
    assert stats.mixed_batches > 0
    # and the server said what it serves, and SIGTERM deleted the application and ended it as a signal does
    assert f"serving {model.name} (1000 classes, 224x224) with 1 replica" in stdout
    assert f"POST JPEG or PNG images to http://127.0.0.1:{http_port}{ROUTE}" in stdout
    assert server.returncode == 143, stderr
    assert _application_status() is None


def test_a_run_from_a_terminal_without_ray_s_settings_joins_the_cluster_with_its_token(
    served: Serving, clips: list[Path], tmp_path: Path
) -> None:
    # given a shell that has only what a user's has: ray.init here set RAY_AUTH_MODE=token for this process alone
    shell = {name: value for name, value in os.environ.items() if name != "RAY_AUTH_MODE"}
    frames = tmp_path / "frames.jsonl"

    # when a run is sent to the cluster from it
    run = run_mnstream(
        "--source", clips[0], "--engine", "serve", "--address", served.address, "--headless", "--jsonl", frames,
        timeout_s=EXIT_TIMEOUT_S, env=shell,
    )  # fmt: skip

    # then it gets every frame classified, and says nothing on standard error
    assert run.returncode == 0, run.stderr
    assert [line["frame"] for line in _lines(frames.read_text())] == list(range(90))
    assert run.stderr == ""


def test_recognition_through_serve_equals_the_local_engine(
    served: Serving, model: Path, reliable_photos: list[tuple[Path, str]]
) -> None:
    # given the local engine and the served one, the same model, and the reliable photos four times over: more than
    # a replica's batch, and more than one call's gRPC message holds
    local = create_engine(ModelConfig(model=str(model)))
    remote = create_engine(ModelConfig(engine="serve", address=served.address))
    photos = [photo for photo, _ in reliable_photos] * 4
    frame_bytes = np.prod(local.input_size) * 3
    assert MESSAGE_BYTES < SERVED_BATCH_SIZE * frame_bytes < len(photos) * frame_bytes
    try:
        # when both classify the reliable photos
        local_scores, remote_scores = classify(local, photos), classify(remote, photos)
    finally:
        local.close()
        remote.close()

    # then the remote engine took its classes and input size from the deployment, and gives the same scores
    assert isinstance(remote, RemoteEngine)
    assert (remote.classes, remote.input_size) == (local.classes, local.input_size)
    assert top1(remote, remote_scores) == [name for _, name in reliable_photos] * 4
    np.testing.assert_allclose(remote_scores, local_scores, atol=1e-6)


def test_the_http_route_answers_top_k_and_refuses_bad_bodies(
    served: Serving, http_port: int, reliable_photos: list[tuple[Path, str]]
) -> None:
    url = f"http://127.0.0.1:{http_port}{ROUTE}"
    photos = {name: photo for photo, name in reliable_photos}

    # when one JPEG is posted as the body
    one = requests.post(url, data=photos["macaw"].read_bytes(), timeout=60)
    # and a PNG and a BMP as the files of a form
    png = cv2.imencode(".png", cv2.imread(str(photos["hotdog"])))[1].tobytes()
    form = {"a": ("hot_dog.png", png, "image/png"), "b": ("bird.bmp", photos["chickadee"].read_bytes())}
    several = requests.post(url, files=form, timeout=60)
    # and bodies that are no image, empty, or no form
    garbage = requests.post(url, data=b"not an image at all", timeout=60)
    empty = requests.post(url, data=b"", timeout=60)
    no_files = requests.post(url, files={"field": (None, "value")}, timeout=60)
    too_large = requests.post(url, data=bytes(MAX_BODY_BYTES + 1), timeout=60)
    get = requests.get(url, timeout=60)
    after = requests.post(url, data=photos["macaw"].read_bytes(), timeout=60)

    # then the images get their top-k in the JSON lines label format, in order
    assert one.status_code == 200
    [answer] = one.json()["images"]
    assert answer["top_k"][0][:2] == ["n01818515", "macaw"]
    assert len(answer["top_k"]) == 5 and all(len(label) == 3 for label in answer["top_k"])
    assert several.status_code == 200
    assert [image["top_k"][0][1] for image in several.json()["images"]] == ["hotdog", "chickadee"]
    # and the bad bodies a 4xx with a message, never a 500 or a dead replica
    assert (garbage.status_code, garbage.json()) == (415, {"error": "image 0 (19 bytes) is not a JPEG or PNG image"})
    assert (empty.status_code, empty.json()) == (400, {"error": "image 0 is empty; POST a JPEG or PNG"})
    assert (no_files.status_code, no_files.json()) == (
        400,
        {"error": "the form has no files; send each image as a file part"},
    )
    assert too_large.status_code == 413
    assert (get.status_code, get.json()) == (405, {"error": f"POST a JPEG or PNG image to {ROUTE}"})
    assert after.status_code == 200 and after.json() == one.json()


def test_a_replica_killed_mid_run_loses_no_frame(served: Serving, video_path: Path, tmp_path: Path) -> None:
    # given a run through the served model that is under way
    before = _stats()
    output = tmp_path / "frames.jsonl"
    video = write_video(tmp_path / "long.avi", read_video(video_path)[0][:240], fps=10)
    run = start_mnstream(
        "--source", video, "--engine", "serve", "--address", served.address, "--headless",
        "--jsonl", output, "--batch-size", 4,
    )  # fmt: skip
    wait_for(has_a_line(output), run, timeout_s=EXIT_TIMEOUT_S)

    # when its replica's actor is killed
    [replica] = [
        actor for actor in ray.util.list_named_actors(all_namespaces=True) if actor["name"].startswith("SERVE_REPLICA")
    ]
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]))
    _, stderr = run.communicate(timeout=EXIT_TIMEOUT_S)

    # then Serve started another, which finished the run, and the run has every frame in order
    after = _stats()
    assert run.returncode == 0, stderr
    assert after.replica_id != before.replica_id and sum(after.frames_by_client.values()) > 0
    assert [line["frame"] for line in _lines(output.read_text())] == list(range(240))
