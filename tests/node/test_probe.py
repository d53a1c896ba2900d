"""Probing edge cases that real files reach only by chance."""

from __future__ import annotations

from types import SimpleNamespace

from node.probe import _probe_open


def test_streams_without_a_codec_context_are_not_media() -> None:
    """FFmpeg may take random bytes for a video whose stream has no codec context (PyAV gives None)."""
    guessed = SimpleNamespace(codec_context=None, disposition=0, duration=None, time_base=None)
    container = SimpleNamespace(
        format=SimpleNamespace(name="mpeg"),
        streams=SimpleNamespace(video=[guessed], audio=[guessed]),
        duration=None,
    )
    result = _probe_open(container, "application/octet-stream")  # type: ignore[arg-type]
    assert (result.kind, result.width, result.video_codec, result.poster) == ("other", None, None, None)
