"""Media probing and poster frames with PyAV (FFmpeg from the wheel, no system ffmpeg).

Blocking: runs in worker threads. A file FFmpeg cannot read is not an error:
it is stored as kind "other" with a warning.
"""

from __future__ import annotations

import logging
import mimetypes
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error

log = logging.getLogger(__name__)

POSTER_MAX_WIDTH = 640
# Demuxers FFmpeg will happily open for files that are not media at all.
_NOT_MEDIA_FORMATS = {"tty", "txt", "data", "bin", "srt", "ass", "webvtt", "lrc", "mpl2", "subviewer"}
_IMAGE_FORMAT_SUFFIXES = ("_pipe",)
_IMAGE_FORMATS = {"image2", "gif", "apng", "webp_pipe"}
_EXTRA_MIME = {
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".m4a": "audio/mp4",
    ".m4v": "video/mp4",
    ".flac": "audio/flac",
    ".opus": "audio/ogg",
    ".ogg": "audio/ogg",
    ".ogv": "video/ogg",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".aac": "audio/aac",
    ".ts": "video/mp2t",
    ".avi": "video/x-msvideo",
    ".mov": "video/quicktime",
}


@dataclass(frozen=True)
class ProbeResult:
    kind: str
    mime: str
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    container: str | None = None
    poster: bytes | None = None
    warning: str | None = None


def guess_mime(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in _EXTRA_MIME:
        return _EXTRA_MIME[suffix]
    mime, _ = mimetypes.guess_type(name, strict=False)
    return mime or "application/octet-stream"


def probe(path: Path, original_name: str) -> ProbeResult:
    mime = guess_mime(original_name)
    if mime.startswith("text/") or mime in ("application/pdf", "application/zip", "application/json"):
        return ProbeResult(kind="other", mime=mime)
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
        return _unreadable(mime, exc)
    try:
        return _probe_open(container, mime)
    except (av.error.FFmpegError, ValueError, OSError, ZeroDivisionError) as exc:
        return _unreadable(mime, exc)
    finally:
        container.close()


def _unreadable(mime: str, exc: BaseException) -> ProbeResult:
    reason = exc.strerror if isinstance(exc, av.error.FFmpegError) and exc.strerror else str(exc)
    reason = " ".join(str(reason).split())[:200]
    return ProbeResult(kind="other", mime=mime, warning=f"not readable as media, stored as a plain file: {reason}")


def _probe_open(container: av.container.InputContainer, mime: str) -> ProbeResult:
    fmt = container.format.name
    if fmt.split(",")[0] in _NOT_MEDIA_FORMATS:
        return ProbeResult(kind="other", mime=mime)
    # A stream without a codec context is one FFmpeg guessed at in random bytes: not a stream.
    video = next(
        (
            s
            for s in container.streams.video
            if s.codec_context is not None and not (s.disposition & av.stream.Disposition.attached_pic)
        ),
        None,
    )
    audio = next((s for s in container.streams.audio if s.codec_context is not None), None)
    duration = None
    if container.duration is not None and container.duration > 0:
        duration = container.duration / av.time_base
    elif video is not None and video.duration and video.time_base:
        duration = float(video.duration * video.time_base)
    elif audio is not None and audio.duration and audio.time_base:
        duration = float(audio.duration * audio.time_base)

    is_image = fmt in _IMAGE_FORMATS or fmt.endswith(_IMAGE_FORMAT_SUFFIXES)
    if video is not None and is_image:
        kind = "image"
    elif video is not None:
        kind = "video"
    elif audio is not None:
        kind = "audio"
    else:
        return ProbeResult(kind="other", mime=mime, container=fmt)

    if kind == "audio" and mime.startswith("video/"):
        mime = "audio/" + mime.split("/", 1)[1]
    if kind == "video" and mime.startswith("audio/"):
        mime = "video/" + mime.split("/", 1)[1]
    if mime == "application/octet-stream":
        mime = {"video": "video/mp4", "audio": "audio/mpeg", "image": "image/jpeg"}[kind]

    poster = None
    warning = None
    if kind == "video" and video is not None:
        try:
            poster = _poster(container, video, duration)
        except (av.error.FFmpegError, ValueError, StopIteration) as exc:
            warning = f"no poster frame: {' '.join(str(exc).split())[:200]}"
        if poster is None and warning is None:
            warning = "no poster frame: no decodable video frame (truncated or corrupt?)"

    return ProbeResult(
        kind=kind,
        mime=mime,
        duration=round(duration, 3) if duration is not None else None,
        width=video.codec_context.width if video is not None else None,
        height=video.codec_context.height if video is not None else None,
        video_codec=video.codec_context.name if video is not None else None,
        audio_codec=audio.codec_context.name if audio is not None else None,
        container=fmt,
        poster=poster,
        warning=warning,
    )


def _poster(container: av.container.InputContainer, stream: av.VideoStream, duration: float | None) -> bytes | None:
    """A JPEG of a frame about 10% in (at most 30 s in), scaled to <= 640 px wide."""
    if duration and duration > 1 and stream.time_base:
        target = min(duration * 0.1, 30.0)
        container.seek(int(target / av.time_base), any_frame=False, backward=True)
    frame = next(iter(container.decode(stream)), None)
    if frame is None:
        return None
    width, height = frame.width, frame.height
    if width > POSTER_MAX_WIDTH:
        height = max(2, int(height * POSTER_MAX_WIDTH / width) // 2 * 2)
        width = POSTER_MAX_WIDTH
    width -= width % 2
    height -= height % 2
    rgb = frame.reformat(width=width, height=height, format="yuvj420p")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width = width
    encoder.height = height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    packets = list(encoder.encode(rgb)) + list(encoder.encode(None))
    data = b"".join(bytes(p) for p in packets)
    return data or None
