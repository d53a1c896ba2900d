"""Watched folders ([folders] paths): scans add new files, skip unchanged ones, follow changes and removals."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node import blobs as blobs_module
from node.service import ContentManager
from priv_network.server import NODE
from priv_network.wire import FeedEntry
from tests.conftest import Cli, NodeFactory, RunningNode, free_port
from tests.priv_network.test_cli import Servers, ok

MEDIA = {"Spider-Man Homecoming.mp4", "Amélie - La Valse.mp3", "cover.png", "notes.txt"}


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def watching(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture, *folders: Path, **config: Any
) -> RunningNode:
    """A node watching ``folders``, once its start-up scan is over (so scans in the test are the only ones)."""
    caplog.set_level(logging.INFO, logger="node.folders")
    node = await node_factory(folders={"paths": [str(f) for f in folders], **config})
    done = f"scanned {len(folders)} watched folders"
    await wait_for(lambda: any(done in r.getMessage() for r in caplog.records), "the start-up scan")
    return node


async def scan(node: RunningNode, expect: int = 200) -> dict[str, Any]:
    async with node.client.post("/api/v1/scan", headers=node.auth) as resp:
        data = await resp.json()
        assert resp.status == expect, data
        return data


async def items(node: RunningNode) -> dict[str, dict[str, Any]]:
    return {i["title"]: i for i in (await node.api("GET", "/api/v1/items"))["items"]}


@pytest.fixture
def ingests(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the store reads in (copies) from now on."""
    calls: list[Path] = []
    original = blobs_module.BlobStore.ingest
    monkeypatch.setattr(blobs_module.BlobStore, "ingest", lambda self, p: calls.append(p) or original(self, p))
    return calls


async def test_scan_adds_new_files_then_skips_unchanged_ones(
    node_factory: NodeFactory,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    media_dir: Path,
    ingests: list[Path],
) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    node = await watching(node_factory, caplog, watched, visibility="network")
    assert await items(node) == {}
    ingests.clear()
    for name in MEDIA:
        shutil.copy2(media_dir / name, watched / name)
    (watched / ".hidden.mp4").write_bytes(b"not for the catalog")

    report = await scan(node)
    assert report == {
        "folders": [str(watched)],
        "added": 4,
        "updated": 0,
        "unchanged": 0,
        "removed": 0,
        "failed": [],
    }
    assert {p.name for p in ingests} == MEDIA
    found = await items(node)
    assert set(found) == {"Spider-Man Homecoming", "Amélie - La Valse", "cover", "notes"}
    assert {i["source"] for i in found.values()} == {"folder"}
    assert {i["visibility"] for i in found.values()} == {"network"}
    assert found["Spider-Man Homecoming"]["kind"] == "video"

    ingests.clear()
    again = await scan(node)
    assert (again["added"], again["unchanged"], again["removed"]) == (0, 4, 0)
    assert ingests == []  # nothing was read again
    assert await items(node) == found


def cma_of(node: RunningNode) -> ContentManager:
    return node.client.app[NODE].cma


async def feed_since(node: RunningNode, since: int) -> dict[str, FeedEntry]:
    """The item entries of this node's changes feed after ``since`` (what a peer reads next), by item ID."""
    page = await cma_of(node).changes(since, 1000)
    return {e.id: e for e in page.entries if e.entity == "item"}


def blob_file(node: RunningNode, content_hash: str) -> Path:
    return node.config.store_path / "blobs" / content_hash[:2] / content_hash[2:4] / content_hash


async def test_changed_file_updates_its_item_in_place(
    node_factory: NodeFactory,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    media_dir: Path,
    ingests: list[Path],
) -> None:
    watched = tmp_path / "watched"
    shutil.copytree(media_dir, watched)
    node = await watching(node_factory, caplog, watched, visibility="network")
    before = await items(node)
    assert len(before) == 4
    notes = before["notes"]
    await node.api("POST", f"/api/v1/items/{notes['id']}/comments", json={"body": "the first version"})
    since = (await cma_of(node).status()).feed_seq
    ingests.clear()

    new_text = b"new notes, longer than before\n"
    (watched / "notes.txt").write_bytes(new_text)
    report = await scan(node)
    assert (report["added"], report["updated"], report["unchanged"], report["removed"]) == (0, 1, 3, 0)
    assert ingests == [watched / "notes.txt"]  # only the changed file was read

    after = await items(node)
    assert set(after) == set(before)
    updated = after["notes"]
    assert updated["id"] == notes["id"]  # the same item, so its comments, views and links stay
    assert updated["content_hash"] != notes["content_hash"]
    assert updated["manifest_hash"] != notes["manifest_hash"]
    assert updated["size"] == len(new_text)
    async with node.client.get(updated["content_url"], headers=node.auth) as resp:
        assert await resp.read() == new_text
    comments = await node.api("GET", f"/api/v1/items/{notes['id']}/comments")
    assert [c["body"] for c in comments["comments"]] == ["the first version"]
    # The old content is released, the new one stored.
    assert not blob_file(node, notes["content_hash"]).exists()
    assert blob_file(node, updated["content_hash"]).read_bytes() == new_text

    # Peers read the new version from the feed: an upsert of the same item with the new hashes.
    changed = await feed_since(node, since)
    assert set(changed) == {notes["id"]}
    entry = changed[notes["id"]]
    assert entry.op == "upsert" and entry.item is not None
    assert (entry.item.content_hash, entry.item.manifest_hash) == (updated["content_hash"], updated["manifest_hash"])
    # ...as this node's own registry already did (it reads the feed like a peer's).
    hits = (await node.api("GET", "/api/v1/search", params={"q": "notes"}))["results"]
    assert [(h["id"], h["content_hash"]) for h in hits] == [(notes["id"], updated["content_hash"])]

    ingests.clear()
    again = await scan(node)
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 4)
    assert ingests == []


async def test_file_changed_into_another_files_content_leads_to_that_item(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path, media_dir: Path
) -> None:
    """One content is one item: the changed file's old item goes (a deletion in the feed)."""
    watched = tmp_path / "watched"
    watched.mkdir()
    shutil.copy2(media_dir / "cover.png", watched / "cover.png")
    shutil.copy2(media_dir / "notes.txt", watched / "notes.txt")
    node = await watching(node_factory, caplog, watched)
    before = await items(node)
    since = (await cma_of(node).status()).feed_seq

    shutil.copyfile(watched / "cover.png", watched / "notes.txt")
    report = await scan(node)
    assert (report["added"], report["updated"], report["unchanged"], report["removed"]) == (0, 1, 1, 0)
    assert set(await items(node)) == {"cover"}
    assert not blob_file(node, before["notes"]["content_hash"]).exists()
    changed = await feed_since(node, since)
    assert [(e.id, e.op) for e in changed.values()] == [(before["notes"]["id"], "delete")]

    # Both paths now lead to the cover: it stays while either remains.
    (watched / "notes.txt").unlink()
    assert (await scan(node))["removed"] == 0
    assert set(await items(node)) == {"cover"}


async def test_changed_file_whose_old_content_lives_on_elsewhere_is_a_new_item(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path, media_dir: Path
) -> None:
    watched = tmp_path / "watched"
    (watched / "a").mkdir(parents=True)
    (watched / "b").mkdir()
    shutil.copy2(media_dir / "notes.txt", watched / "a" / "notes.txt")
    shutil.copy2(media_dir / "notes.txt", watched / "b" / "notes copy.txt")
    node = await watching(node_factory, caplog, watched)
    (old,) = (await items(node)).values()

    (watched / "a" / "notes.txt").write_text("rewritten\n")
    report = await scan(node)
    assert (report["added"], report["updated"], report["unchanged"]) == (1, 0, 1)
    found = {i["id"]: i for i in (await node.api("GET", "/api/v1/items"))["items"]}
    assert old["id"] in found  # b/notes copy.txt still has the old content
    assert len(found) == 2
    assert blob_file(node, old["content_hash"]).exists()


async def test_removed_file_takes_its_item_along(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path, media_dir: Path
) -> None:
    watched = tmp_path / "watched"
    shutil.copytree(media_dir, watched)
    node = await watching(node_factory, caplog, watched)
    cover = (await items(node))["cover"]
    assert blob_file(node, cover["content_hash"]).exists()
    since = (await cma_of(node).status()).feed_seq

    (watched / "cover.png").unlink()
    report = await scan(node)
    assert (report["added"], report["unchanged"], report["removed"]) == (0, 3, 1)
    async with node.client.get(f"/api/v1/items/{cover['id']}", headers=node.auth) as resp:
        assert resp.status == 404
    assert not blob_file(node, cover["content_hash"]).exists()
    assert set(await items(node)) == {"Spider-Man Homecoming", "Amélie - La Valse", "notes"}
    # Recorded as a deletion in the feed, so peers drop it too.
    changed = await feed_since(node, since)
    assert [(e.id, e.op) for e in changed.values()] == [(cover["id"], "delete")]
    assert (await scan(node))["removed"] == 0


async def test_same_content_in_two_places_stays_while_one_remains(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path, media_dir: Path
) -> None:
    watched = tmp_path / "watched"
    (watched / "a").mkdir(parents=True)
    (watched / "b").mkdir()
    shutil.copy2(media_dir / "cover.png", watched / "a" / "cover.png")
    shutil.copy2(media_dir / "cover.png", watched / "b" / "cover copy.png")
    node = await watching(node_factory, caplog, watched)
    assert len(await items(node)) == 1
    (watched / "a" / "cover.png").unlink()
    assert (await scan(node))["removed"] == 0
    assert len(await items(node)) == 1
    (watched / "b" / "cover copy.png").unlink()
    assert (await scan(node))["removed"] == 1
    assert await items(node) == {}


async def test_missing_folder_is_reported_and_others_scanned(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path, media_dir: Path
) -> None:
    node = await watching(node_factory, caplog, tmp_path / "gone", media_dir)
    report = await scan(node)
    assert report["folders"] == [str(tmp_path / "gone"), str(media_dir)]
    assert [(f["path"], "No such file" in f["error"]) for f in report["failed"]] == [(str(tmp_path / "gone"), True)]
    assert report["unchanged"] == 4


async def test_scan_without_watched_folders_is_a_clear_400(node: RunningNode) -> None:
    data = await scan(node, expect=400)
    assert data["error"]["code"] == "invalid_input"
    assert "no watched folders" in data["error"]["message"]
    assert "[folders] paths" in data["error"]["message"]


async def test_only_owners_scan(
    node_factory: NodeFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path, media_dir: Path
) -> None:
    node = await watching(node_factory, caplog, media_dir)
    user = await node.api("POST", "/api/v1/tokens", json={"name": "guest"})
    async with node.client.post("/api/v1/scan", headers={"Authorization": f"Bearer {user['token']}"}) as resp:
        assert resp.status == 403
    async with node.client.post("/api/v1/scan") as resp:
        assert resp.status == 401


@pytest.mark.slow
def test_cli_scan(cli: Cli, media_dir: Path) -> None:
    """`priv-network scan` against a running node that watches a folder."""
    port = free_port()
    ok(cli.run("init", "--name", "alice", "--listen", f"127.0.0.1:{port}"))
    config = cli.data / "config.toml"
    text = config.read_text()
    assert text.count("paths = []") == 1
    config.write_text(text.replace("paths = []", f"paths = [{json.dumps(str(media_dir))}]"))
    servers = Servers(cli)
    try:
        servers.start(port)
        first = json.loads(ok(cli.run("scan", "--json")))
        # The node's own start-up scan may have come first: together they found the four files once.
        assert first["added"] + first["unchanged"] == 4
        assert first["folders"] == [str(media_dir)]
        assert ok(cli.run("scan")) == "1 folders: 0 added, 4 unchanged, 0 removed, 0 failed\n"
    finally:
        servers.cleanup()
