"""Turns a config into a run: its readers, the recognizer's factory and the sinks, refusing an impossible run
before anything is opened.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from stream.config import Config, ModelConfig, OutputConfig, StreamConfig
from stream.engines import require_tensorflow_if_needed
from stream.events import NULL_OBSERVER, Observer, Observers
from stream.jsonlines import JsonLinesSink
from stream.memory import frame_bytes, warn_if_frames_exceed_memory
from stream.outputs import is_folder
from stream.pipeline import Pipeline
from stream.queues import StopFlag
from stream.recognizer import Recognizer
from stream.sinks import ConsoleSink, Routed, Sink, TopKPrinter, WindowSink
from stream.sources import FrameReader, Probed, Reconnect, Source, open_readers
from stream.types import SourceInfo, SourceKind, UsageError
from stream.videofile import VideoFileSink
from stream.videoformats import CONTAINERS, DEFAULT_SUFFIX, choose_format
from stream.web import open_web

log = logging.getLogger(__name__)


def pipeline_from_config(
    config: Config, *, console: Console | None, observer: Observer = NULL_OBSERVER, sinks: Sequence[Sink] = ()
) -> Pipeline:
    """Opens the sources and the sinks the config asks for; the model loads when the pipeline runs.

    Args:
        config: The run.
        console: Where the progress, the labels or the top-k lines are written; None for nowhere.
        observer: Watches the run (`RunStats` for its summary).
        sinks: The caller's own, after the config's.

    Raises:
        UsageError: A source cannot be opened, an output cannot be written, the page's port is in use, or the
            options do not fit the sources.
    """
    require_tensorflow_if_needed(config.model)
    # The page listens before any source opens: a port in use ends the run before a frame is read.
    web = open_web(config.output) if config.output.web else None
    readers: list[FrameReader] = []
    try:
        readers = open_readers(config.input)
        infos = [reader.info for reader in readers]
        stop = StopFlag()
        check_sources_fit(config, infos)
        configured = sinks_for(config, infos, console=console, stop=stop)
    except BaseException:
        for closable in [*readers, *([web] if web else [])]:
            closable.close()
        raise
    if web is not None:
        web.show(infos)
        configured.append(web)
        observer = Observers([observer, web])
    _warn_of_ignored_options(config, infos)
    readied = [Probed(reader) for reader in readers]
    pipeline = assemble(config, readied, [*configured, *sinks], observer=observer, stop=stop)
    # Every frame waits with the model's copy, and with its image only where the pipeline keeps it. A model file's
    # input size is known once it loads, after this; a named MobileNet's stands in for it.
    bytes_each = config.model.input_size**2 * 3 + (frame_bytes(infos) if pipeline.keeps_images else 0)
    warn_if_frames_exceed_memory(
        len(infos), queue_size=config.input.queue_size, batch_size=config.batching.batch_size, bytes_each=bytes_each
    )
    return pipeline


def assemble(
    config: Config,
    sources: list[Source],
    sinks: list[Sink],
    *,
    observer: Observer = NULL_OBSERVER,
    stop: StopFlag | None = None,
    model_ready: threading.Event | None = None,
    reconnect: Reconnect | None = None,
) -> Pipeline:
    """A pipeline of ready sources and sinks, with the config's model, batching, queueing and reconnecting.

    Args:
        config: The run.
        sources: One per stream, in stream order.
        sinks: Where the frames go.
        observer: Watches the run.
        stop: The flag the sinks stop the run with.
        model_ready: Set once the model is ready, for a caller that waits for it.
        reconnect: How lost live sources are reopened, when not as the config says.
    """
    still = [source.info.stream_id for source in sources if source.info.kind is SourceKind.IMAGES]
    return Pipeline(
        sources,
        lambda: Recognizer.from_config(config, still_streams=still),
        sinks,
        batch_size=config.batching.batch_size,
        max_wait_ms=config.batching.max_wait_ms,
        queue_size=config.input.queue_size,
        reconnect=reconnect or Reconnect(config.input.reconnect_attempts, config.input.reconnect_delay_s),
        observer=observer,
        stop=stop,
        model_ready=model_ready,
    )


def _warn_of_ignored_options(config: Config, infos: list[SourceInfo]) -> None:
    """Says which options this run will not use, where the config alone cannot refuse them."""
    output, still = config.output, all(info.kind is SourceKind.IMAGES for info in infos)
    if config.model.engine == "serve" and _model_options_given(config.model):
        log.warning("with --engine serve the model is the one `mnstream serve` loaded; its --model options are unused")
    if output.log_interval_s != OutputConfig().log_interval_s and (still or not output.headless):
        log.warning("--log-interval sets how often --headless runs log their labels; this run logs none")
    if output.window_per_stream and still:
        log.warning("--window-per-stream sets the windows of video; still images are printed, not shown")


def _model_options_given(model: ModelConfig) -> bool:
    """Whether options that choose or load a model differ from their defaults."""
    keys = ("model", "weights", "alpha", "input_size", "labels", "preprocess", "threads", "runtime")
    defaults = ModelConfig()
    return any(getattr(model, key) != getattr(defaults, key) for key in keys)


def check_sources_fit(config: Config, infos: list[SourceInfo]) -> None:
    """Refuses options that do not fit the sources, before any output is opened.

    Raises:
        UsageError: Still images mixed with video, or a video output or the page for still images.
    """
    images = [info.kind is SourceKind.IMAGES for info in infos]
    if any(images) and not all(images):
        raise UsageError("still images and video streams cannot be mixed in one run; run them separately")
    if all(images) and config.output.path:
        raise UsageError("--output writes video; for still images the top-k is printed, drop --output")
    if all(images) and config.output.web:
        raise UsageError("--web shows video streams; for still images the top-k is printed, drop --web")


def sinks_for(config: Config, infos: list[SourceInfo], *, console: Console | None, stop: StopFlag) -> list[Sink]:
    """The sinks the output config asks for, in the order each frame reaches them; the console's only with a
    console.

    Each sink checks and takes its own file or window as it is made. They are made in an order where nothing is
    destroyed before the last check: the video files are only locked (they open with the first frame), the window
    needs a display, and the JSON lines file, which is emptied as it opens, comes last.

    Raises:
        UsageError: An output that cannot be written, exists without --overwrite, is a source or another output,
            or is taken by another run; a window without a display.
    """
    output = config.output
    still = all(info.kind is SourceKind.IMAGES for info in infos)
    paths = output_paths(output.path, [info.name for info in infos]) if output.path else []
    jsonl_file = [output.jsonl] if output.jsonl and output.jsonl != "-" else []
    check_separate_files([*paths, *jsonl_file], [stream.source for stream in config.input.streams if stream.source])
    videos: list[Sink] = []
    windows: list[Sink] = []
    lines: list[Sink] = []
    try:
        if paths:
            files = dict(zip((info.stream_id for info in infos), paths, strict=True))
            streams = dict(zip((info.stream_id for info in infos), config.input.streams, strict=True))

            def video_file(info: SourceInfo) -> Sink:
                path = files[info.stream_id]
                suffix = Path(path).suffix.lower()
                return VideoFileSink(
                    path,
                    fps=info.timeline_fps,
                    overwrite=output.overwrite,
                    # An extension that is no video's is refused by the sink, with the other checks of its path.
                    video_format=choose_format(suffix, codec=output.codec, crf=output.crf, preset=output.preset)
                    if suffix in CONTAINERS
                    else None,
                    audio_from=_audio_source(streams[info.stream_id], info) if output.audio else None,
                )

            videos.append(_routed(infos, video_file))
        if not output.headless and not still:
            windows.append(_window(infos, per_stream=output.window_per_stream, stop=stop))
        if output.jsonl:
            names = {info.stream_id: info.name for info in infos}
            lines.append(
                JsonLinesSink(output.jsonl, events_only=output.events, stream_names=names, overwrite=output.overwrite)
            )
    except BaseException:
        for sink in [*videos, *windows, *lines]:
            sink.close()
        raise
    if console is None:
        return [*videos, *lines, *windows]
    if still:
        # Standard output carries one kind of line: the JSON ones when asked for there.
        return [*videos, *lines] if output.jsonl == "-" else [*videos, *lines, TopKPrinter(console)]
    console_sink = ConsoleSink(console, infos, log_labels=output.headless, interval_s=output.log_interval_s)
    return [*videos, *lines, *windows, console_sink]


def _window(infos: list[SourceInfo], *, per_stream: bool, stop: StopFlag) -> Sink:
    # Windows share one thread: waiting to show a file at its pace would hold back a live stream's frames.
    paces_files = not any(info.kind.is_live for info in infos)
    if per_stream:
        return _routed(
            infos, lambda info: WindowSink(f"mnstream: {info.name}", [info], stop=stop, paces_files=paces_files)
        )
    title = f"mnstream: {', '.join(info.name for info in infos)}"
    return WindowSink(title, infos, stop=stop, paces_files=paces_files)


def _routed(infos: list[SourceInfo], make: Callable[[SourceInfo], Sink]) -> Routed:
    """A sink per stream; those already made are closed again when a later one cannot be."""
    sinks: dict[int, Sink] = {}
    try:
        for info in infos:
            sinks[info.stream_id] = make(info)
    except BaseException:
        for sink in sinks.values():
            sink.close()
        raise
    return Routed(sinks)


def output_paths(pattern: str, names: list[str]) -> list[str]:
    """One video path per stream: `pattern` itself for one stream; `{name}` filled in, or a file named after the
    stream in a folder, for several (a stream named after a file goes without the file's extension).

    Raises:
        UsageError: Several streams but no way to tell their files apart.
    """
    # A file's extension is left out: out/clip.mp4, not out/clip.mp4.mp4.
    stems = [re.sub(r"\.[A-Za-z0-9]{1,5}(?=( \(\d+\))?$)", "", name) for name in names]
    safe = [re.sub(r"[^\w.-]+", "_", stem).strip("_.") or "stream" for stem in stems]
    if "{name}" in pattern:
        paths = [pattern.replace("{name}", name) for name in safe]
    elif is_folder(pattern):
        paths = [str(Path(pattern) / f"{name}{DEFAULT_SUFFIX}") for name in safe]
    elif len(names) == 1:
        paths = [pattern]
    else:
        raise UsageError(
            f"--output {pattern} would be written by {len(names)} streams; put {{name}} in it "
            "(annotated_{name}.mp4) or give a folder"
        )
    if len(set(paths)) < len(paths):
        raise UsageError(f"--output {pattern} gives two streams the same file; name the streams differently")
    return paths


def check_separate_files(outputs: list[str], sources: list[str]) -> None:
    """Fails before anything is opened if an output would overwrite a source or another output.

    Raises:
        UsageError: An output that is also a source, or one file given to two outputs.
    """
    source_files = {Path(source).resolve() for source in sources if Path(source).is_file()}
    written: set[Path] = set()
    for output in outputs:
        target = Path(output).resolve()
        if target in source_files:
            raise UsageError(
                f"{output} is a source of this run, and writing it would destroy it; choose another output"
            )
        if target in written:
            raise UsageError(f"{output} is given to two outputs (--output and --jsonl); give each its own file")
        written.add(target)


def _audio_source(stream: StreamConfig, info: SourceInfo) -> str | None:
    """The file whose audio goes into the stream's annotated copy: a local video file's own; live sources have
    none, and a file served over HTTP would be downloaded a second time.
    """
    if info.kind is SourceKind.VIDEO_FILE and stream.source is not None and Path(stream.source).is_file():
        return stream.source
    return None
