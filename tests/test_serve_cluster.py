"""`mnstream serve` with a Ray cluster of its own, and replicas spread over a two-node cluster on this machine."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from itertools import takewhile
from pathlib import Path

import numpy as np
import pytest
import ray
from helpers import SMALL_MODEL, free_port, require_asset, start_mnstream
from ray import serve
from ray.cluster_utils import Cluster

from stream.config import BatchingConfig, ModelConfig
from stream.deployment import APP_NAME, Inferred
from stream.serving import ServeOptions, Serving

EXIT_TIMEOUT_S = 300
"""A hang guard for the subprocesses, not a speed bound."""


def _descendants(pid: int) -> set[int]:
    """The processes `pid` started, and theirs, from /proc."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = {int(child) for child in (task / "children").read_text().split()}
            except OSError:  # the task ended while we looked
                continue
            pending += children - found
            found |= children
    return found


def test_serve_with_a_cluster_of_its_own_stops_it_on_ctrl_c() -> None:
    # given `mnstream serve` without --address, which starts a Ray cluster of its own
    model = require_asset(SMALL_MODEL)
    server = start_mnstream("serve", "--model", model, "--http-port", free_port())
    try:
        summary = list(takewhile(lambda line: line != "Ctrl-C stops it.\n", server.stdout))
        ray_processes = {pid: _command_line(pid) for pid in _descendants(server.pid)}
    finally:
        # when Ctrl-C ends it, once it serves
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=EXIT_TIMEOUT_S)

    # then it had said where it listens, ended as an interrupt does, and left no Ray process of its cluster behind
    assert "(started here; it stops with this command)" in "".join(summary), stderr
    assert any("ray::ServeReplica" in command for command in ray_processes.values())
    assert server.returncode == 130, stderr
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while left := [command for pid, command in ray_processes.items() if _command_line(pid) == command]:
        assert time.monotonic() < deadline, f"Ray processes left behind: {left}"
        time.sleep(0.1)


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    """A head and a worker node on this machine, one CPU each, and this process connected to them."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_replicas_are_placed_on_both_nodes(two_nodes: Cluster) -> None:
    # given two replicas of one CPU each on a cluster of two one-CPU nodes
    model = require_asset(SMALL_MODEL)
    options = ServeOptions(replicas=2, http_port=free_port())
    with Serving(ModelConfig(model=str(model)), BatchingConfig(), options, address=two_nodes.address) as serving:
        handle = serve.get_app_handle(APP_NAME)
        width, height = serving.info.input_size
        frames = np.zeros((4, height, width, 3), np.uint8)

        # when batches are sent until both replicas have answered
        answers: list[Inferred] = []
        while len({answer.batch_id.split("#")[0] for answer in answers}) < 2:
            assert len(answers) < 400, "one replica answered every batch"
            responses = [handle.infer.remote(frames, "test") for _ in range(8)]
            answers += [response.result(timeout_s=60) for response in responses]

    # then the two replicas ran on the two nodes
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
    assert {answer.node_id for answer in answers} == nodes
    # and each call's frames were inferred in a batch of whole calls, at most 8 frames (the deployment's batch size)
    assert all(answer.scores.shape == (4, 1000) for answer in answers)
    assert {answer.batch_frames for answer in answers} <= {4, 8}
