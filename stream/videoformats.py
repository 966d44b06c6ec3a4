"""The annotated video's formats: which codecs each extension holds, their CRF and preset, and where audio goes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stream.outputs import is_folder
from stream.types import ConfigError

_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(frozen=True, slots=True)
class VideoCodec:
    """One codec as mnstream encodes it: its encoder, and what `--crf` and `--preset` set in it."""

    encoder: str
    pixel_format: str
    options: Mapping[str, str] = field(default_factory=dict)
    """The encoder's private options that no flag sets."""
    crf: int | None = None
    """The default constant rate factor; None for a codec without one."""
    crf_range: tuple[int, int] = (0, 0)
    preset_option: str = ""
    """The encoder option that `--preset` sets; empty for a codec without presets."""
    presets: tuple[str, ...] = ()
    """The values `--preset` takes."""
    preset: str | None = None
    """The default preset: the fastest."""


VIDEO_CODECS: dict[str, VideoCodec] = {
    # ultrafast at crf 28, measured on the shared 768x432 clip against OpenCV's mp4v writer it replaces: 1.3 ms a
    # frame (mp4v 1.4), 6.3 MB (6.8) at 40.3 dB PSNR (38.9). superfast costs twice the time, veryfast three times.
    "h264": VideoCodec(
        "libx264",
        "yuv420p",
        crf=28,
        crf_range=(0, 51),
        preset_option="preset",
        presets=_X26X_PRESETS,
        preset="ultrafast",
    ),
    # x265's own default CRF; ultrafast still costs 3.5 times x264's ultrafast a frame (7.1 ms against 2.0 on the
    # shared clip, one thread) for an eighth of the size.
    "hevc": VideoCodec(
        "libx265",
        "yuv420p",
        {"x265-params": "log-level=error"},
        crf=28,
        crf_range=(0, 51),
        preset_option="preset",
        presets=_X26X_PRESETS,
        preset="ultrafast",
    ),
    # libvpx's presets are its deadlines; the default "good" costs fifteen times "realtime" a frame (28 ms against
    # 1.9 on the shared clip).
    "vp9": VideoCodec(
        "libvpx-vp9",
        "yuv420p",
        {"cpu-used": "8", "row-mt": "1"},
        crf=32,
        crf_range=(0, 63),
        preset_option="deadline",
        presets=("realtime", "good", "best"),
        preset="realtime",
    ),
    # SVT-AV1's own default CRF; its presets run from 13, the fastest, down to 0. 12 costs what x264's ultrafast
    # does on the shared clip (1.8 ms a frame) at a quarter of the size.
    "av1": VideoCodec(
        "libsvtav1",
        "yuv420p",
        crf=35,
        crf_range=(1, 63),
        preset_option="preset",
        presets=tuple(str(preset) for preset in range(14)),
        preset="12",
    ),
    # Full-range 4:2:0 at a fixed quality (qscale 3): MJPEG has no CRF and no presets.
    "mjpeg": VideoCodec("mjpeg", "yuvj420p", {"flags": "+qscale", "global_quality": str(3 * 118)}),
}
"""Codec name (`--codec`) -> how it is encoded."""


@dataclass(frozen=True, slots=True)
class Container:
    """One kind of file: the codecs it holds, how it is muxed, and what becomes of a source's audio."""

    codecs: tuple[str, ...]
    """The video codecs it holds; the first is the default."""
    options: Mapping[str, str] = field(default_factory=dict)
    has_timestamps: bool = True
    """False for AVI, which has none: its frames sit on a fixed grid and the muxer fills gaps with repeats."""
    audio_copies: frozenset[str] = frozenset()
    """Audio codecs whose packets go in as they are."""
    audio_encoder: str = ""
    """What any other audio is re-encoded to; empty for a file that keeps no audio."""


_MP4_AUDIO = frozenset({"aac", "mp3", "alac", "opus", "flac"})
# Fragmented MP4: each fragment (a keyframe, at most 1 s of video) goes out with its own index, flushed to disk at
# once, so a run killed or stopped by a full disk leaves every fragment written so far playable; a +faststart
# file's index is written only when the run ends well. delay_moov writes the header with the first fragment, once
# every stream's first timestamp is known, so an audio track that starts before or after the video (AAC's priming
# samples, a late start) keeps its place through an edit list: with empty_moov each track's first sample is moved
# to 0. global_sidx indexes the fragments at the end of a run that ends well (it moves the data up by the index's
# size, as +faststart does); without it Chromium took the duration of the first four seconds for the whole video's.
_MP4_OPTIONS = {
    "movflags": "frag_keyframe+delay_moov+default_base_moof+global_sidx",
    "frag_duration": "1000000",
    "flush_packets": "1",
}
CONTAINERS: dict[str, Container] = {
    ".mp4": Container(
        ("h264", "hevc", "av1", "vp9", "mjpeg"), _MP4_OPTIONS, audio_copies=_MP4_AUDIO, audio_encoder="aac"
    ),
    # FFmpeg writes .m4v with its iPod muxer, which takes H.264 and AAC or ALAC only.
    ".m4v": Container(("h264",), _MP4_OPTIONS, audio_copies=frozenset({"aac", "alac"}), audio_encoder="aac"),
    ".mov": Container(
        ("h264", "hevc", "mjpeg"), _MP4_OPTIONS, audio_copies=frozenset({"aac", "mp3", "alac"}), audio_encoder="aac"
    ),
    # Matroska writes clusters as it goes: a killed run leaves every finished cluster readable.
    ".mkv": Container(
        ("h264", "hevc", "vp9", "av1", "mjpeg"),
        {"flush_packets": "1"},
        audio_copies=_MP4_AUDIO | {"vorbis", "ac3", "eac3", "pcm_s16le"},
        audio_encoder="aac",
    ),
    ".webm": Container(("vp9", "av1"), audio_copies=frozenset({"opus", "vorbis"}), audio_encoder="libopus"),
    ".avi": Container(("mjpeg",), has_timestamps=False),
}
"""Extension -> container."""

DEFAULT_SUFFIX = ".mp4"
"""The extension of the files written into a folder given as --output."""


@dataclass(frozen=True, slots=True)
class VideoFormat:
    """A container and a codec with its quality, as a run writes them."""

    container: Container
    codec_name: str
    codec: VideoCodec
    crf: int | None
    preset: str | None

    @property
    def encoder_options(self) -> dict[str, str]:
        options = dict(self.codec.options)
        if self.crf is not None:
            options["crf"] = str(self.crf)
        if self.preset is not None:
            options[self.codec.preset_option] = self.preset
        return options


def _refuse(key: str, rule: str) -> ConfigError:
    return ConfigError(f"{key}: {rule}", key=key, rule=rule)


def container_suffix(pattern: str) -> str:
    """The extension of the files that `--output pattern` names: its own, or `DEFAULT_SUFFIX` for a folder."""
    return DEFAULT_SUFFIX if is_folder(pattern) else Path(pattern).suffix.lower()


def choose_format(
    suffix: str, *, codec: str | None = None, crf: int | None = None, preset: str | None = None
) -> VideoFormat:
    """The format of a file with this extension, with the codec, CRF and preset asked for or else the defaults.

    Args:
        suffix: One of `CONTAINERS`' extensions.
        codec: One of `VIDEO_CODECS`; None for the extension's default.
        crf: The constant rate factor; None for the codec's default.
        preset: One of the codec's presets; None for its default (the fastest).

    Raises:
        ConfigError: The extension cannot hold the codec, or the codec has no such CRF or preset.
    """
    container = CONTAINERS[suffix]
    name = codec or container.codecs[0]
    if name not in VIDEO_CODECS:
        raise _refuse("output.codec", f"must be one of {', '.join(VIDEO_CODECS)}")
    if name not in container.codecs:
        raise _refuse("output.codec", f"a {suffix} file holds {' or '.join(container.codecs)}, not {name}")
    chosen = VIDEO_CODECS[name]
    low, high = chosen.crf_range
    if crf is not None and chosen.crf is None:
        raise _refuse("output.crf", f"{name} has no CRF; its quality is fixed")
    if crf is not None and not low <= crf <= high:
        raise _refuse("output.crf", f"{name} takes a CRF from {low} (best) to {high} (smallest)")
    if preset is not None and preset not in chosen.presets:
        raise _refuse(
            "output.preset", f"{name} takes {', '.join(chosen.presets)}" if chosen.presets else f"{name} has no presets"
        )
    return VideoFormat(container, name, chosen, chosen.crf if crf is None else crf, preset or chosen.preset)
