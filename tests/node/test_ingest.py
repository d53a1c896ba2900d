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


async def test_a_folder_walk_passes_over_system_files_and_partial_downloads(node: RunningNode, media_dir: Path) -> None:
    junk = ["Thumbs.db", "desktop.ini", ".DS_Store", "Film.mp4.part", "Film.mkv.crdownload", "clip.ytdl"]
    for name in junk:
        (media_dir / name).write_bytes(b"junk " + name.encode())
    (media_dir / "@eaDir" / "cover.png").mkdir(parents=True)
    (media_dir / "@eaDir" / "cover.png" / "SYNOFILE_THUMB_M.jpg").write_bytes(b"thumb")
    report = await add(node, media_dir)
    assert {i["title"] for i in report["added"]} == {"Spider-Man Homecoming", "Amélie - La Valse", "cover", "notes"}
    assert report["failed"] == []
    # Named on its own, such a file is taken: the walk skips it, the user did not.
    report = await add(node, media_dir / "Film.mp4.part")
    assert [i["title"] for i in report["added"]] == ["Film.mp4"]


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


# -- the node's own files are never ingested ------------------------------------


def data_folder(node: RunningNode) -> Path:
    """The node's data folder as `init` leaves it: key, admin token, config (the test node has no key file)."""
    data = node.config.data_dir
    node.identity.save(node.config.key_path)
    (data / "admin.token").write_text(node.token + "\n")
    (data / "config.toml").write_text("[node]\nname = 'alice'\n")
    return data


async def all_items(node: RunningNode) -> list[dict]:
    return list((await node.api("GET", "/api/v1/items"))["items"])


async def test_the_data_folder_and_its_files_are_refused_by_name(node: RunningNode, media_dir: Path) -> None:
    data = data_folder(node)
    secrets_ = [data / "node.key", data / "admin.token", data / "config.toml", data]
    report = await add(node, *secrets_, media_dir / "cover.png")
    assert [i["title"] for i in report["added"]] == ["cover"]  # the rest still ingests
    failed = {f["path"]: f["error"] for f in report["failed"]}
    assert set(failed) == {str(p) for p in secrets_}
    for message in failed.values():
        assert "data folder" in message and "never added" in message and "\n" not in message
    # So does a file of the content store, and (SQLite) the database, even by another name.
    blob = next(p for p in (node.config.store_path / "blobs").rglob("*") if p.is_file())
    database = Path(node.config.database_url.split("///", 1)[1]) if "sqlite" in node.config.database_url else None
    report = await add(node, blob, node.config.store_path, *([database] if database else []), expect=200)
    failed = {f["path"]: f["error"] for f in report["failed"]}
    assert "content store" in failed[str(blob)] and "content store" in failed[str(node.config.store_path)]
    if database is not None:
        assert "database" in failed[str(database)]
    assert [i["title"] for i in await all_items(node)] == ["cover"]


async def test_a_folder_walk_skips_the_data_folder_and_the_store(
    node_factory: NodeFactory, media_dir: Path, tmp_path: Path
) -> None:
    # The store placed inside the media tree, and the node's data folder beside the media.
    node = await node_factory(store={"path": str(media_dir / "pn-store")})
    data = data_folder(node)
    await add(node, media_dir / "cover.png")  # the store now holds a blob and its folders
    report = await add(node, tmp_path)
    added = {i["title"] for i in report["added"]}
    assert added == {"Spider-Man Homecoming", "Amélie - La Valse", "notes"}
    assert [i["title"] for i in report["existing"]] == ["cover"]
    warnings = {w["path"]: w["warning"] for w in report["warnings"]}
    # The test's SQLite database sits in tmp_path, outside the data folder: its files are skipped too.
    database = {p: w for p, w in warnings.items() if Path(p).name.startswith("node.db")}
    assert set(database.values()) <= {"skipped: it is this node's database"}
    if "sqlite" in node.config.database_url:
        assert str(tmp_path / "node.db") in database
    assert {p: w for p, w in warnings.items() if p not in database} == {
        str(data): "skipped: a node's data folder is never added",
        str(media_dir / "pn-store"): "skipped: the content store is never added",
    }
    assert report["failed"] == []


async def test_symlinks_into_the_data_folder_are_resolved(node: RunningNode, media_dir: Path, tmp_path: Path) -> None:
    data = data_folder(node)
    (media_dir / "innocent.mp4").symlink_to(data / "node.key")
    (tmp_path / "looks-like-media").symlink_to(data, target_is_directory=True)
    report = await add(node, media_dir, media_dir / "innocent.mp4", tmp_path / "looks-like-media")
    assert {i["title"] for i in report["added"]} == {"Spider-Man Homecoming", "Amélie - La Valse", "cover", "notes"}
    failed = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert set(failed) == {"innocent.mp4", "looks-like-media"}
    assert all("data folder" in e for e in failed.values())
    warnings = {Path(w["path"]).name: w["warning"] for w in report["warnings"]}
    assert warnings["innocent.mp4"].startswith(f"skipped: it links to {data / 'node.key'}")


async def test_a_watched_folder_around_the_data_folder_skips_it(node_factory: NodeFactory, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "film.bin").write_bytes(os.urandom(1000))
    node = await node_factory(folders={"paths": [str(tmp_path)], "visibility": "private"})
    data_folder(node)
    scan = await node.api("POST", "/api/v1/scan")
    assert scan["failed"] == []
    assert [i["title"] for i in await all_items(node)] == ["film"]


async def test_an_import_cannot_reference_the_data_folder(node: RunningNode) -> None:
    from priv_network.errors import InvalidInput
    from priv_network.server import NODE

    data = data_folder(node)
    cma = node.client.app[NODE].cma
    with pytest.raises(InvalidInput, match="data folder"):
        await cma.ingest_file(
            data / "admin.token", title=None, visibility="private", source="plex", metadata={}, reference=True
        )
    assert await all_items(node) == []


# -- `add --visibility` on content already stored --------------------------------


async def test_an_explicit_visibility_applies_to_items_already_stored(node: RunningNode, media_dir: Path) -> None:
    first = (await add(node, media_dir / "cover.png", visibility="network"))["added"][0]
    seq = (await node.api("GET", "/api/v1/status"))["feed_seq"]
    # Without a visibility, the stored item keeps its own; nothing is recorded.
    again = await add(node, media_dir / "cover.png", expect=200)
    assert [i["visibility"] for i in again["existing"]] == ["network"]
    assert again["visibility_changed"] == []
    assert (await node.api("GET", "/api/v1/status"))["feed_seq"] == seq
    # With one, it takes it (a folder add too, for the files already stored), recorded in the feed.
    report = await add(node, media_dir, visibility="private")
    assert len(report["added"]) == 3
    assert [(i["id"], i["visibility"]) for i in report["existing"]] == [(first["id"], "private")]
    assert report["visibility_changed"] == [{"id": first["id"], "was": "network", "now": "private"}]
    assert (await node.api("GET", f"/api/v1/items/{first['id']}"))["visibility"] == "private"
    assert (await node.api("GET", "/api/v1/status"))["feed_seq"] > seq
    # Asking for the visibility it already has changes nothing.
    same = await add(node, media_dir / "cover.png", visibility="private", expect=200)
    assert same["visibility_changed"] == []


async def test_the_api_takes_only_absolute_paths(node: RunningNode, media_dir: Path, tmp_path: Path) -> None:
    for body in ({"paths": ["relative.mp4"]}, {"paths": [str(media_dir), "sub/x.mp4"]}, {"paths": ["~/x.mp4"]}):
        async with node.client.post("/api/v1/items", json=body, headers=node.auth) as resp:
            data = await resp.json()
            assert resp.status == 400, data
            assert "absolute" in data["error"]["message"] and "\n" not in data["error"]["message"]
    async with node.client.post("/api/v1/items", json={"paths": ["/tmp/a\0b"]}, headers=node.auth) as resp:
        assert resp.status == 400
    assert await all_items(node) == []
    for path in ("relative.tar", "./x.tar", "~/x.tar"):
        async with node.client.post("/api/v1/backup", json={"path": path}, headers=node.auth) as resp:
            data = await resp.json()
            assert resp.status == 400, data
            assert "absolute" in data["error"]["message"]
    async with node.client.post("/api/v1/backup", json={"path": str(tmp_path / "b.tar")}, headers=node.auth) as resp:
        assert resp.status == 201, await resp.text()
