"""Real media for tests, encoded with PyAV (no system ffmpeg)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_video(
    path: Path, *, seconds: float = 2.0, width: int = 160, height: int = 120, fps: int = 10, audio: bool = True
) -> Path:
    """An H.264 (or MPEG-4) + AAC MP4 with a moving gradient, decodable by browsers."""
    container = av.open(str(path), mode="w")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    vs = container.add_stream(codec, rate=fps)
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
    if codec == "libx264":
        vs.options = {"preset": "ultrafast", "g": str(fps)}
    aus = container.add_stream("aac", rate=44100) if audio else None
    frames = int(seconds * fps)
    for i in range(frames):
        img = np.zeros((height, width, 3), dtype=np.uint8)
        img[:, :, 0] = (np.arange(width) * 255 // width + i * 10) % 256
        img[:, :, 1] = np.arange(height)[:, None] * 255 // height
        img[:, :, 2] = (i * 25) % 256
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        for packet in vs.encode(frame):
            container.mux(packet)
    for packet in vs.encode(None):
        container.mux(packet)
    if aus is not None:
        _encode_audio(container, aus, seconds)
    container.close()
    return path


def make_audio(path: Path, seconds: float = 2.0) -> Path:
    fmt = "mp3" if path.suffix == ".mp3" else None
    container = av.open(str(path), mode="w", format=fmt)
    codec = "libmp3lame" if path.suffix == ".mp3" else ("flac" if path.suffix == ".flac" else "aac")
    aus = container.add_stream(codec, rate=44100)
    _encode_audio(container, aus, seconds)
    container.close()
    return path


def _encode_audio(container: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    rate = 44100
    frame_size = stream.codec_context.frame_size or 1024
    total = int(seconds * rate)
    t = 0
    layout = "stereo" if stream.codec_context.layout.nb_channels == 2 else "mono"
    channels = 2 if layout == "stereo" else 1
    fmt = stream.codec_context.format.name
    while t < total:
        n = min(frame_size, total - t)
        samples = np.sin(2 * np.pi * 440 * (np.arange(t, t + n) / rate)).astype(np.float32) * 0.2
        data = np.tile(samples, (channels, 1))
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = t
        frame.time_base = Fraction(1, rate)
        if fmt != "fltp":
            frame = av.AudioResampler(format=fmt, layout=layout, rate=rate).resample(frame)[0]
        for packet in stream.encode(frame):
            container.mux(packet)
        t += n
    for packet in stream.encode(None):
        container.mux(packet)


def make_image(path: Path, width: int = 64, height: int = 48) -> Path:
    img = np.full((height, width, 3), 128, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    container = av.open(str(path), mode="w", format="image2")
    stream = container.add_stream("png" if path.suffix == ".png" else "mjpeg", rate=1)
    stream.width, stream.height = width, height
    stream.pix_fmt = "rgb24" if path.suffix == ".png" else "yuvj420p"
    for packet in stream.encode(frame.reformat(format=stream.pix_fmt)):
        container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path
