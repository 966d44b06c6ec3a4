"""A video file's audio in its annotated copy: copied where the container holds its codec, re-encoded where not."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import TYPE_CHECKING

from stream.videoformats import Container

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)


class AudioTrack:
    """The source's audio, written into the output as far as the video has got, so the two interleave by time
    and a run stopped early keeps no audio past its last frame.

    Times are on the video's timeline: seconds from the source's first video timestamp, as `Frame.position_s`
    counts them, so the audio keeps its place against the frames wherever either starts.
    """

    def __init__(
        self,
        source: av.container.InputContainer,
        items: Iterator[tuple[float, av.Packet | av.AudioFrame]],
        stream: av.AudioStream,
        *,
        encodes: bool,
        output: av.container.OutputContainer,
        name: str,
    ) -> None:
        """Takes a source and the items read from it: packets to copy, or frames to encode when `encodes`."""
        self._source = source
        self._items = items
        self._stream = stream
        self._encodes = encodes
        self._output = output
        self._name = name
        self._next = self._pull()

    @classmethod
    def open(
        cls, source_path: str, output: av.container.OutputContainer, container: Container, *, name: str
    ) -> AudioTrack | None:
        """Adds the source's audio stream to `output`, which must not have been written to yet.

        Args:
            source_path: The video file whose audio it is.
            output: The annotated copy.
            container: What `output` is, and so which audio it holds as it is and what it re-encodes the rest to.
            name: The output, as warnings name it.

        Returns:
            The track, or None where the source has no audio, it cannot be read, or the container keeps none
            (the last two with a warning).
        """
        import av

        try:
            source = av.open(source_path)
        except av.FFmpegError as error:
            log.warning(f"{name}: the audio of {source_path} cannot be read ({error}); the video goes without it")
            return None
        try:
            audio = source.streams.best("audio")
            if audio is None:
                source.close()
                return None
            if not container.audio_encoder:
                log.warning(f"{name}: an AVI file keeps no audio; write .mp4, .mkv or .webm to keep it")
                source.close()
                return None
            video = source.streams.best("video")
            video_start_s = float(video.start_time * video.time_base) if video and video.start_time else 0.0
            encodes = audio.codec_context.name not in container.audio_copies
            if not encodes:
                stream = output.add_stream_from_template(audio)
                # A tag of the source's container ('mp4a') can mean nothing, or something else, in the output's.
                stream.codec_context.codec_tag = "\0\0\0\0"
                items: Iterator[tuple[float, av.Packet | av.AudioFrame]] = _copied(audio, stream, video_start_s)
            else:
                stream = _encoder_stream(output, container.audio_encoder, audio)
                items = _resampled(audio, stream, video_start_s)
            return cls(source, items, stream, encodes=encodes, output=output, name=name)
        except BaseException:
            source.close()
            raise

    def write_until(self, end_s: float) -> None:
        """Writes the audio that starts before `end_s`.

        Raises:
            OSError: The output could not be written.
        """
        while self._next is not None and self._next[0] < end_s:
            item = self._next[1]
            self._output.mux(self._stream.encode(item) if self._encodes else item)
            self._next = self._pull()

    def close(self) -> None:
        """Writes what the encoder still holds, and lets the source go.

        Raises:
            OSError: The output could not be written.
        """
        try:
            if self._encodes:
                self._output.mux(self._stream.encode(None))
        finally:
            self._source.close()

    def _pull(self) -> tuple[float, av.Packet | av.AudioFrame] | None:
        import av

        try:
            return next(self._items, None)
        except av.FFmpegError as error:
            log.warning(f"{self._name}: the source's audio cannot be read on ({error}); the rest goes without it")
            return None


def _copied(audio: av.AudioStream, stream: av.AudioStream, video_start_s: float) -> Iterator[tuple[float, av.Packet]]:
    shift = round(video_start_s / audio.time_base)
    for packet in audio.container.demux(audio):
        # The demuxer ends with an empty packet that only flushes a decoder.
        if packet.dts is None:
            continue
        packet.dts -= shift
        packet.pts = packet.dts if packet.pts is None else packet.pts - shift
        packet.stream = stream
        yield float(packet.pts * packet.time_base), packet


def _encoder_stream(output: av.container.OutputContainer, encoder: str, audio: av.AudioStream) -> av.AudioStream:
    import av

    codec = av.Codec(encoder, "w")
    rate = audio.rate if not codec.audio_rates or audio.rate in codec.audio_rates else 48_000
    layout = audio.layout.name if audio.channels <= 2 else "stereo"
    stream = output.add_stream(encoder, rate=rate, layout=layout)
    stream.format = codec.audio_formats[0]
    stream.time_base = stream.codec_context.time_base = Fraction(1, rate)
    # Opened now to learn the frame size it takes (AAC 1024 samples, Opus 960).
    stream.codec_context.open()
    return stream


def _resampled(
    audio: av.AudioStream, stream: av.AudioStream, video_start_s: float
) -> Iterator[tuple[float, av.AudioFrame]]:
    import av

    context = stream.codec_context
    resampler = av.AudioResampler(
        format=context.format, layout=context.layout, rate=context.sample_rate, frame_size=context.frame_size or None
    )
    shift = round(video_start_s * context.sample_rate)

    def placed(frames: Iterable[av.AudioFrame]) -> Iterator[tuple[float, av.AudioFrame]]:
        for frame in frames:
            frame.pts -= shift
            yield frame.pts / context.sample_rate, frame

    for packet in audio.container.demux(audio):
        for frame in packet.decode():
            yield from placed(resampler.resample(frame))
    yield from placed(resampler.resample(None))
