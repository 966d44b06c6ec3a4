"""What a run's frames take in memory: the estimate, and the warning when the queues could outgrow the machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import require_asset

from stream.memory import frame_bytes, frames_held
from stream.types import SourceInfo, SourceKind


def test_frames_held_counts_every_queue_and_stage() -> None:
    # two streams' queues of 8 and a frame each being read, two batches of 8, 8 results and the frame being drawn
    assert frames_held(2, queue_size=8, batch_size=8) == 2 * 9 + 2 * 8 + 8 + 1


def test_a_4k_frame_is_25_mb() -> None:
    info = SourceInfo(0, "4k", SourceKind.VIDEO_FILE, width=3840, height=2160, fps=30.0)
    assert frame_bytes([info]) == 3840 * 2160 * 3


def test_queues_larger_than_the_machine_are_warned_about(tmp_path: Path, video_path: Path) -> None:
    # given a queue that could hold a million 768x432 frames, about 1 TB
    model = require_asset("models/tflite/mobilenet_v1_0.25_128_quant.tflite")

    # when
    result = subprocess.run(
        [sys.executable, "-m", "stream", "--source", str(video_path), "--model", str(model), "--headless"]
        + ["--queue-size", "1000000"],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )

    # then the run goes on, having said what to lower
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("mnstream: warning:")]
    assert len(warnings) == 1 and "--queue-size 1000000 and --batch-size 8 let this run hold up to" in warnings[0]
    assert warnings[0].endswith("lower them")
