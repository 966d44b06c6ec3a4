"""Turning row results into ratios, pass/fail targets, rich tables, a JSON document and a plot."""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from stream.bench.results import QUANTIZED_ROWS, ROWS, STAGES, TITLES, ModelFormat, RowResult, RowStatus

RATIOS = (
    ("headless", "tensorflow"),
    ("float16", "ceiling"),
    ("int8", "ceiling"),
    ("headless", "ceiling"),
    ("video", "ceiling"),
    ("headless", "baseline"),
    ("video", "baseline"),
    ("headless", "mediapipe"),
    ("video", "mediapipe"),
)
"""(numerator, denominator) rows of every throughput ratio reported."""

RATIO_TARGETS = {
    ModelFormat.KERAS: {("video", "ceiling"): 0.9, ("video", "baseline"): 6.0},
    ModelFormat.COMPILED: {("headless", "tensorflow"): 3.0},
    ModelFormat.TFLITE: {("headless", "ceiling"): 0.85, ("headless", "mediapipe"): 2.0, ("video", "mediapipe"): 1.4},
}
"""The issue's lowest acceptable ratios: float targets for Keras models, int8 targets for .tflite ones."""

DECODE_BOUND_TARGETS = {ModelFormat.COMPILED: {"headless": 0.9, "video": 0.8}}
"""Lowest acceptable share of the decode-bound ceiling (see `decode_bound_fps`) for the pipeline rows."""
CONVERTING_FIRST_FRAME_LIMIT_S = 10.0
"""For a Keras model on LiteRT, the first run's: it converts the model before its first frame."""
FIRST_FRAME_LIMIT_S = {ModelFormat.KERAS: 5.0, ModelFormat.COMPILED: 1.0, ModelFormat.TFLITE: 1.0}
"""For a Keras model on LiteRT, the cached run: the rows after the ceiling, which compiled it if it was not."""
PEAK_RSS_LIMIT_MB = {ModelFormat.KERAS: 1200.0, ModelFormat.COMPILED: 300.0, ModelFormat.TFLITE: 300.0}
SAME_TOP1_TO_RECOMMEND = 0.95
"""A quantized model is recommended only where its top-1 is the float32 model's on this share of the frames."""
PIPELINE_ROWS = ("headless", "video", "live")
"""The rows that are the product, whose memory the RSS target bounds."""


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One comparison; with a limit it is a target that passes or fails."""

    name: str
    value: float | None
    unit: str
    limit: float | None = None
    at_least: bool = True
    """The target is value >= limit; otherwise value <= limit."""

    @property
    def passed(self) -> bool | None:
        """None when there is no target or nothing to compare (a row skipped or failed)."""
        if self.limit is None or self.value is None:
            return None
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}


def throughput_ratio(rows: Mapping[str, RowResult], numerator: str, denominator: str) -> float | None:
    """frames/s of one row over another's; None unless both were measured."""
    top, bottom = rows.get(numerator), rows.get(denominator)
    if top is None or bottom is None or not top.frames_per_s or not bottom.frames_per_s:
        return None
    return top.frames_per_s / bottom.frames_per_s


def checks(rows: Mapping[str, RowResult], model_format: ModelFormat) -> list[Check]:
    """Every ratio, then the live, start-up and memory targets, each against the issue's target for the format.

    Args:
        rows: Results by row name; absent, skipped or failed rows leave their comparisons without a value.
        model_format: Whose targets apply.
    """
    targets = RATIO_TARGETS[model_format]
    found = [Check(_ratio_name(*pair), throughput_ratio(rows, *pair), "x", limit=targets.get(pair)) for pair in RATIOS]
    bound = decode_bound_fps(rows)
    for row, target in DECODE_BOUND_TARGETS.get(model_format, {}).items():
        measured = rows.get(row)
        value = measured.frames_per_s / bound if bound and measured is not None and measured.frames_per_s else None
        found.append(Check(f"{TITLES[row]} / decode-bound ceiling", value, "x", limit=target))
    live_row = rows.get("live")
    live = live_row.live if live_row is not None else None
    if live is not None:
        found.append(Check("live p95 latency", live.latency_p95_ms, "ms", limit=live.bound_ms, at_least=False))
        # Flat: the last third's p95 no more than one frame interval above the first third's.
        found.append(
            Check("live p95 growth, last third - first", live.growth_ms, "ms", limit=live.interval_ms, at_least=False)
        )
    video = rows.get("video")
    found.append(
        Check(
            "time to first annotated frame",
            video.first_frame_s if video is not None else None,
            "s",
            limit=FIRST_FRAME_LIMIT_S[model_format],
            at_least=False,
        )
    )
    if model_format is ModelFormat.COMPILED:
        cold = rows.get("cold")
        found.append(
            Check(
                "first frame, converting (empty cache)",
                cold.first_frame_s if cold is not None else None,
                "s",
                limit=CONVERTING_FIRST_FRAME_LIMIT_S,
                at_least=False,
            )
        )
    peaks = [rows[row].peak_rss_mb for row in PIPELINE_ROWS if row in rows and rows[row].peak_rss_mb is not None]
    found.append(
        Check(
            "pipeline peak RSS", max(peaks, default=None), "MB", limit=PEAK_RSS_LIMIT_MB[model_format], at_least=False
        )
    )
    return found


def decode_bound_fps(rows: Mapping[str, RowResult]) -> float | None:
    """The most frames/s a pipeline can reach when decoding and inference take turns on the same cores:
    1 / (1 / ceiling + decode time), with the ceiling row's own decode time a frame.
    """
    ceiling = rows.get("ceiling")
    if ceiling is None or not ceiling.frames_per_s or ceiling.stage_ms.get("decode") is None:
        return None
    return 1 / (1 / ceiling.frames_per_s + ceiling.stage_ms["decode"] / 1000)


def recommendation(rows: Mapping[str, RowResult]) -> str | None:
    """Which of float32 (the ceiling row), float16 and int8 to run on this machine, and why; None unless measured.

    The fastest wins, but a quantized model only where its top-1 stays the float32 model's on nearly every frame.
    """
    ceiling = rows.get("ceiling")
    if ceiling is None or not ceiling.frames_per_s:
        return None
    candidates = [
        rows[row]
        for row in QUANTIZED_ROWS
        if row in rows and rows[row].frames_per_s and rows[row].top1_agreement is not None
    ]
    if not candidates:
        return None
    faithful = [row for row in candidates if row.top1_agreement >= SAME_TOP1_TO_RECOMMEND]
    best = max(faithful, key=lambda row: row.frames_per_s, default=None)
    speeds = ", ".join(
        f"{row.row} {row.frames_per_s / ceiling.frames_per_s:.2f}x float32 (same top-1 on {row.top1_agreement:.0%})"
        for row in candidates
    )
    if best is None or best.frames_per_s <= ceiling.frames_per_s:
        return f"use float32, as runs do by default: {speeds}"
    return f"use {best.row} (mnstream export --{best.row} ...; --model the .tflite): {speeds}"


def _ratio_name(numerator: str, denominator: str) -> str:
    return f"{TITLES[numerator]} / {TITLES[denominator]}"


def document(rows: Mapping[str, RowResult], found: Sequence[Check], *, setup: Mapping[str, object]) -> dict[str, Any]:
    """Everything measured, for `--json`: the setup, the machine, every row, every check and the advice."""
    return {
        "setup": dict(setup),
        "machine": machine(),
        "rows": {name: result.to_dict() for name, result in rows.items()},
        "checks": [check.to_dict() for check in found],
        "decode_bound_fps": decode_bound_fps(rows),
        "recommendation": recommendation(rows),
    }


VECTOR_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
"""The CPU features that decide which kernels XNNPACK and oneDNN pick, hence the numbers."""


def machine() -> dict[str, object]:
    """The CPU the numbers were measured on: its model, cores and vector extensions (Linux's /proc/cpuinfo)."""
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {**info, "cpu": fields.get("model name"), "vector_flags": [flag for flag in VECTOR_FLAGS if flag in flags]}


def tables(rows: Mapping[str, RowResult], found: Sequence[Check], *, title: str) -> Group:
    """The rows, why any were skipped or failed, their stage means, the live latency and the checks."""
    parts: list[Table | Text] = [_rows_table(rows, title)]
    parts += [
        Text(
            f"{TITLES[result.row]} {result.status}: {result.reason}",
            style="yellow" if result.status is RowStatus.SKIPPED else "bold red",
        )
        for result in _ordered(rows)
        if not result.ok
    ]
    parts += [_layouts_text(result) for result in _ordered(rows) if result.ok and result.layouts_fps]
    parts.append(_stages_table(rows))
    live_row = rows.get("live")
    if live_row is not None and live_row.live is not None:
        parts.append(_live_table(live_row))
    parts.append(_checks_table(found))
    advice = recommendation(rows)
    if advice is not None:
        parts.append(Text(advice))
    return Group(*parts)


def _layouts_text(result: RowResult) -> Text:
    """How fast each way of running a ceiling's model went; the row shows the fastest."""
    rates = "; ".join(f"{layout} {fps:.1f}" for layout, fps in result.layouts_fps.items())
    return Text(f"{TITLES[result.row]}, the fastest of (frames/s): {rates}")


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ordered(rows: Mapping[str, RowResult]) -> list[RowResult]:
    return [rows[name] for name in ROWS if name in rows]


def _rows_table(rows: Mapping[str, RowResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("row", no_wrap=True)
    for header in ("frames", "frames/s", "wall s", "first\nframe s", "peak\nRSS MB", "batch", "TF\nloaded"):
        table.add_column(header, justify="right")
    for result in _ordered(rows):
        if result.ok:
            table.add_row(
                TITLES[result.row],
                str(result.frames),
                _number(result.frames_per_s, ".1f"),
                _number(result.wall_s, ".1f"),
                _number(result.first_frame_s, ".2f"),
                _number(result.peak_rss_mb, ".0f"),
                _number(result.batch_size, "d"),
                "yes" if result.tensorflow_imported else "no",
            )
        else:
            table.add_row(TITLES[result.row], str(result.status), style="dim")
    return table


_STAGE_HEADERS = {
    "preprocess": "pre-\nprocess",
    "inference": "infer-\nence",
    "postprocess": "post-\nprocess",
    "sinks": "sinks\n(encode)",
    "end to end": "end to\nend",
}


def _stages_table(rows: Mapping[str, RowResult]) -> Table:
    table = Table(title="mean ms per frame by stage; inference is per model call", title_justify="left")
    table.add_column("row", no_wrap=True)
    for stage in STAGES:
        table.add_column(_STAGE_HEADERS.get(stage, stage), justify="right")
    for result in _ordered(rows):
        if result.ok:
            table.add_row(TITLES[result.row], *(_number(result.stage_ms.get(stage), ".2f") for stage in STAGES))
    return table


def _live_table(row: RowResult) -> Table:
    live = row.live
    assert live is not None
    table = Table(title=f"live: {live.fps:g} fps for {live.duration_s:g} s, capture to display", title_justify="left")
    values = {
        "p50\nms": _number(live.latency_p50_ms, ".1f"),
        "p95\nms": _number(live.latency_p95_ms, ".1f"),
        "max\nms": _number(live.latency_max_ms, ".1f"),
        "bound\nms": _number(live.bound_ms, ".1f"),
        "p95 1st\nthird": _number(live.first_third_p95_ms, ".1f"),
        "p95 last\nthird": _number(live.last_third_p95_ms, ".1f"),
        "inference ms\nmean / p95": f"{_number(live.inference_mean_ms, '.1f')} / {_number(live.inference_p95_ms, '.1f')}",
        "read": str(live.frames_read),
        "shown": str(live.frames_shown),
        "dropped": str(live.dropped),
    }
    for header in values:
        table.add_column(header, justify="right")
    table.add_row(*values.values())
    return table


_UNIT_FORMATS = {"x": ".2f", "ms": ".1f", "s": ".2f", "MB": ".0f"}


def _checks_table(found: Sequence[Check]) -> Table:
    table = Table(title="ratios and targets", title_justify="left")
    for header in ("comparison", "value", "target", "result"):
        table.add_column(header, justify="left" if header == "comparison" else "right")
    for check in found:
        spec = _UNIT_FORMATS[check.unit]
        value = _number(check.value, spec)
        target = "-"
        if check.limit is not None:
            target = f"{'>=' if check.at_least else '<='} {check.limit:{spec}}{check.unit}"
        result = {None: "-", True: "[green]pass[/]", False: "[bold red]FAIL[/]"}[check.passed]
        table.add_row(check.name, f"{value}{check.unit}" if check.value is not None else value, target, result)
    return table


def plot(rows: Mapping[str, RowResult], path: Path, *, title: str) -> None:
    """Draws frames/s per row and, when measured, the live latency against its bound, into a PNG.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    measured = [result for result in _ordered(rows) if result.frames_per_s and result.row != "live"]
    live_row = rows.get("live")
    live = live_row.live if live_row is not None else None
    figure, axes = pyplot.subplots(1, 2 if live is not None else 1, figsize=(12 if live else 7, 4), squeeze=False)
    speed = axes[0][0]
    speed.barh([TITLES[r.row] for r in measured], [r.frames_per_s for r in measured], color="tab:blue")
    speed.invert_yaxis()
    speed.margins(x=0.15)  # room for the value after the longest bar
    speed.set_xlabel("frames/s (higher is better)")
    for index, result in enumerate(measured):
        speed.annotate(
            f"{result.frames_per_s:.0f}",
            (result.frames_per_s, index),
            va="center",
            xytext=(3, 0),
            textcoords="offset points",
        )
    if live is not None:
        latency = axes[0][1]
        names = ["p50", "p95", "max"]
        values = [live.latency_p50_ms or 0, live.latency_p95_ms or 0, live.latency_max_ms or 0]
        latency.bar(names, values, color="tab:orange")
        if live.bound_ms is not None:
            latency.axhline(live.bound_ms, color="tab:red", linestyle="--", label=f"bound {live.bound_ms:.0f} ms")
            latency.legend()
        latency.set_title(f"live at {live.fps:g} fps for {live.duration_s:g} s")
        latency.set_ylabel("capture to display, ms (lower is better)")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
