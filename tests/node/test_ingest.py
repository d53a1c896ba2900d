"""Ingest through the admin API: hashing, dedupe, probing, skip of unchanged files, bad input."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import blake3
import pytest

from node import blobs as blobs_module
from tests.conftest import NodeFactory, RunningNode
from tests.media import make_video


async def add(node: RunningNode, *paths: Path, expect: int = 201, **extra: object) -> dict:
    body = {"paths": [str(p) for p in paths], **extra}
    async with node.client.post("/api/v1/items", json=body, headers=node.auth) as resp:
        data = await resp.json()
        assert resp.status == expect, data
        return data


def store_files(node: RunningNode) -> list[Path]:
    return sorted(p for p in (node.config.store_path / "blobs").rglob("*") if p.is_file())


async def test_folder_is_ingested_recursively_with_probed_metadata(node: RunningNode, media_dir: Path) -> None:
    sub = media_dir / "sub" / "deeper"
    sub.mkdir(parents=True)
    make_video(sub / "clip_two.mp4", seconds=1, width=96, height=64, audio=False)
    report = await add(node, media_dir)
    by_title = {i["title"]: i for i in report["added"]}
    assert set(by_title) == {"Spider-Man Homecoming", "Amélie - La Valse", "cover", "notes", "clip two"}
    video = by_title["Spider-Man Homecoming"]
    assert video["kind"] == "video"
    assert video["mime"] == "video/mp4"
    assert video["duration"] == pytest.approx(3.0, abs=0.2)
    assert (video["width"], video["height"]) == (160, 120)
    assert video["video_codec"] in ("h264", "mpeg4")
    assert video["audio_codec"] == "aac"
    assert video["has_poster"] is True
    assert video["node"] == node.identity.node_id
    assert video["visibility"] == "private"
    audio = by_title["Amélie - La Valse"]
    assert (audio["kind"], audio["mime"]) == ("audio", "audio/mpeg")
    assert audio["duration"] == pytest.approx(2.0, abs=0.2)
    assert audio["width"] is None and audio["has_poster"] is False
    image = by_title["cover"]
    assert (image["kind"], image["width"], image["height"]) == ("image", 64, 48)
    assert by_title["notes"]["kind"] == "other"
    assert (by_title["clip two"]["width"], by_title["clip two"]["audio_codec"]) == (96, None)

    # Content-addressed: the stored file is named by the BLAKE3 of its bytes.
    src = (media_dir / "Spider-Man Homecoming.mp4").read_bytes()
    assert video["content_hash"] == blake3.blake3(src).hexdigest()
    assert video["size"] == len(src)
    stored = node.config.store_path / "blobs" / video["content_hash"][:2] / video["content_hash"][2:4]
    assert (stored / video["content_hash"]).read_bytes() == src
    assert not list((node.config.store_path / "tmp").iterdir())


async def test_same_content_twice_is_stored_once(node: RunningNode, tmp_path: Path, media_dir: Path) -> None:
    first = await add(node, media_dir / "cover.png")
    copy = tmp_path / "copy-of-cover.png"
    copy.write_bytes((media_dir / "cover.png").read_bytes())
    second = await add(node, copy, expect=200)
    assert second["added"] == []
    assert [i["id"] for i in second["existing"]] == [first["added"][0]["id"]]
    assert len(store_files(node)) == 1


async def test_readding_unchanged_folder_skips_hashing(
    node: RunningNode, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add(node, media_dir)
    calls = []
    original = blobs_module.BlobStore.ingest
    monkeypatch.setattr(blobs_module.BlobStore, "ingest", lambda self, p: calls.append(p) or original(self, p))
    again = await add(node, media_dir, expect=200)
    assert again["skipped_unchanged"] == 4
    assert len(again["existing"]) == 4
    assert calls == []
    # A changed file (new mtime and size) is read again.
    (media_dir / "notes.txt").write_text("changed text, longer\n")
    third = await add(node, media_dir)
    assert [i["title"] for i in third["added"]] == ["notes"]
    assert len(calls) == 1


async def test_title_and_visibility(node: RunningNode, media_dir: Path) -> None:
    report = await add(node, media_dir / "cover.png", title="  The   Cover ", visibility="network")
    assert report["added"][0]["title"] == "The Cover"
    assert report["added"][0]["visibility"] == "network"
    # --title names exactly one item
    data = await add(node, media_dir, expect=400, title="x")
    assert "one item" in data["error"]["message"]
    data = await add(node, media_dir / "cover.png", expect=400, visibility="everyone")
    assert "visibility" in data["error"]["message"]


async def test_missing_and_odd_paths_are_listed_and_the_rest_ingests(
    node: RunningNode, media_dir: Path, tmp_path: Path
) -> None:
    (media_dir / "dangling.mp4").symlink_to(tmp_path / "nowhere")
    os.mkfifo(media_dir / "a-fifo")
    report = await add(node, media_dir, tmp_path / "does-not-exist")
    failed = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert "does-not-exist" in failed and "No such file" in failed["does-not-exist"]
    assert "dangling.mp4" in failed
    assert len(report["added"]) == 4


async def test_corrupt_and_truncated_media_are_stored_as_plain_files(
    node: RunningNode, media_dir: Path, tmp_path: Path
) -> None:
    data = (media_dir / "Spider-Man Homecoming.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage.mkv").write_bytes(os.urandom(4096))
    report = await add(node, tmp_path / "truncated.mp4", tmp_path / "garbage.mkv")
    assert len(report["added"]) == 2
    for item in report["added"]:
        assert item["kind"] == "other"
        assert item["warning"]
    assert {Path(w["path"]).name for w in report["warnings"]} == {"truncated.mp4", "garbage.mkv"}


async def test_full_disk_refused_up_front_leaves_nothing(node_factory: NodeFactory, media_dir: Path) -> None:
    node = await node_factory(store={"min_free": "1000TiB"})
    async with node.client.post(
        "/api/v1/items", json={"paths": [str(media_dir / "cover.png")]}, headers=node.auth
    ) as resp:
        data = await resp.json()
        assert resp.status == 507, data
        assert "free disk" in data["error"]["message"]
    assert store_files(node) == []
    items = await node.api("GET", "/api/v1/items")
    assert items["items"] == []


async def test_disk_filling_mid_write_leaves_no_half_file(
    node: RunningNode, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = []
    real_write = os.write

    def failing_write(fd: int, data: bytes | memoryview) -> int:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(data))
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(blobs_module.os, "write", failing_write)
    async with node.client.post(
        "/api/v1/items", json={"paths": [str(media_dir / "Spider-Man Homecoming.mp4")]}, headers=node.auth
    ) as resp:
        data = await resp.json()
        assert resp.status == 507, data
        assert "filled up" in data["error"]["message"]
    monkeypatch.undo()
    assert store_files(node) == []
    assert not list((node.config.store_path / "tmp").iterdir())
    assert (await node.api("GET", "/api/v1/items"))["items"] == []


async def test_remove_deletes_item_file_and_poster(node: RunningNode, media_dir: Path) -> None:
    report = await add(node, media_dir / "Spider-Man Homecoming.mp4")
    item = report["added"][0]
    poster = node.config.store_path / "posters" / f"{item['content_hash']}.jpg"
    assert poster.read_bytes()[:2] == b"\xff\xd8"  # a JPEG
    await node.api("DELETE", f"/api/v1/items/{item['id']}")
    assert store_files(node) == []
    assert not poster.exists()
    async with node.client.get(f"/api/v1/items/{item['id']}", headers=node.auth) as resp:
        assert resp.status == 404
    async with node.client.delete(f"/api/v1/items/{item['id']}", headers=node.auth) as resp:
        assert resp.status == 404
    # Re-adding after removal brings it back as a new item.
    again = await add(node, media_dir / "Spider-Man Homecoming.mp4")
    assert again["added"][0]["id"] != item["id"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"paths": "one-string"}',
        b'{"paths": []}',
        b'{"paths": [1, 2]}',
        b'{"paths": ["/tmp"], "title": 5}',
    ],
)
async def test_bad_add_requests_get_400(node: RunningNode, body: bytes) -> None:
    async with node.client.post("/api/v1/items", data=body, headers=node.auth) as resp:
        assert resp.status == 400
        data = await resp.json()
        assert data["error"]["code"] == "invalid_input"
        assert "\n" not in data["error"]["message"]
