"""The changes feed: the CMA publishes it, the registry follows it, the wire format guards it.

Changes are made through a real node's HTTP API and the feed is read from the
node's own ContentManager in-process (the federation endpoint needs a signed
peer request; it is covered with the network). The registry-side tests build
the CMA and the registry from their classes on a migrated database, so they
can sync with any page size and feed it hostile pages.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import itertools
import secrets
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from node.blobs import BlobStore
from node.models import metadata as node_metadata
from node.service import ContentManager
from node.store import CmaStore
from priv_network import db
from priv_network.errors import InvalidInput, PrivNetworkError
from priv_network.identity import NodeIdentity
from priv_network.interfaces import Peer
from priv_network.keys import AUTHENTICATOR
from priv_network.peerclient import PeerClient, PeerUnreachable
from priv_network.server import create_app
from priv_network.wire import MAX_PAGE, FeedEntry, FeedPage, RosterEvent
from registry.models import entries as registry_items
from registry.models import metadata as registry_metadata
from registry.models import sources as registry_sources
from registry.service import Registry
from registry.store import RegistryStore, search_text
from tests.conftest import RunningNode, free_port

# -- reading a running node's feed ------------------------------------------------------


def cma_of(client: TestClient[Any, Any]) -> ContentManager:
    cma = client.app[AUTHENTICATOR]
    assert isinstance(cma, ContentManager)
    return cma


async def add_file(node: RunningNode, folder: Path, title: str) -> dict[str, Any]:
    folder.mkdir(exist_ok=True)
    path = folder / f"{secrets.token_hex(6)}.txt"
    path.write_text(secrets.token_hex(16))
    report = await node.api("POST", "/api/v1/items", json={"paths": [str(path)], "title": title})
    return dict(report["added"][0])


def item_entries(page: FeedPage) -> list[FeedEntry]:
    return [e for e in page.entries if e.entity == "item"]


def assert_well_formed(page: FeedPage) -> None:
    seqs = [e.seq for e in page.entries]
    assert seqs == sorted(set(seqs)), "sequence numbers strictly increase"
    assert all(s > page.since for s in seqs)
    keys = [(e.entity, e.id) for e in page.entries]
    assert len(keys) == len(set(keys)), "an entity appears once"
    assert page.next == (seqs[-1] if seqs else page.since)
    # What the CMA publishes is what a peer's parser accepts.
    assert FeedPage.from_json(page.to_json()) == page


async def test_every_change_is_a_new_sequence_number(node: RunningNode, tmp_path: Path) -> None:
    cma = cma_of(node.client)
    start = (await cma.changes(0, 5000)).next
    first = await add_file(node, tmp_path, "First")
    page = await cma.changes(start, 100)
    assert_well_formed(page)
    (added,) = item_entries(page)
    assert (added.op, added.id, added.item and added.item.title) == ("upsert", first["id"], "First")
    seen = [added.seq]

    async def one_change_after(cursor: int) -> FeedEntry:
        page = await cma.changes(cursor, 100)
        assert_well_formed(page)
        (entry,) = page.entries
        assert entry.seq > seen[-1]
        seen.append(entry.seq)
        return entry

    await node.api("PATCH", f"/api/v1/items/{first['id']}", json={"title": "First, renamed"})
    renamed = await one_change_after(seen[-1])
    assert renamed.item is not None and (renamed.op, renamed.item.title) == ("upsert", "First, renamed")

    await node.api("PATCH", f"/api/v1/items/{first['id']}", json={"visibility": "network"})
    shared = await one_change_after(seen[-1])
    assert shared.item is not None and shared.item.visibility == "network"

    second = await add_file(node, tmp_path, "Second")
    assert (await one_change_after(seen[-1])).id == second["id"]

    await node.api("DELETE", f"/api/v1/items/{first['id']}")
    removed = await one_change_after(seen[-1])
    assert (removed.op, removed.id, removed.item) == ("delete", first["id"], None)

    # Read from the start: each item once, in its latest state, deletion recorded.
    full = await cma.changes(start, 5000)
    assert_well_formed(full)
    latest = {e.id: e for e in item_entries(full)}
    assert list(latest) == [second["id"], first["id"]]
    assert latest[first["id"]].op == "delete"
    second_item = latest[second["id"]].item
    assert second_item is not None and second_item.title == "Second"
    assert (await cma.status()).feed_seq == full.next == seen[-1]


async def test_a_change_that_fails_is_not_a_change(node: RunningNode, tmp_path: Path) -> None:
    cma = cma_of(node.client)
    item = await add_file(node, tmp_path, "Stable")
    before = (await cma.changes(0, 5000)).next
    for body in ({"title": ""}, {"title": 5}, {"visibility": "everyone"}, {"colour": "red"}):
        async with node.client.patch(f"/api/v1/items/{item['id']}", json=body, headers=node.auth) as resp:
            assert resp.status == 400, body
    async with node.client.delete(f"/api/v1/items/{'a' * 26}", headers=node.auth) as resp:
        assert resp.status == 404
    assert (await cma.changes(before, 100)).entries == []


async def test_paging_gives_the_same_feed_as_one_page(node: RunningNode, tmp_path: Path) -> None:
    cma = cma_of(node.client)
    items = [await add_file(node, tmp_path, f"Item {i}") for i in range(7)]
    for item in items[::3]:
        await node.api("PATCH", f"/api/v1/items/{item['id']}", json={"title": item["title"] + " (cut)"})
    await node.api("DELETE", f"/api/v1/items/{items[1]['id']}")
    whole = await cma.changes(0, 5000)
    assert_well_formed(whole)
    assert not whole.more
    for limit in (1, 2, 3, 4, len(whole.entries) - 1, len(whole.entries), len(whole.entries) + 1):
        collected: list[FeedEntry] = []
        cursor, pages = 0, 0
        while True:
            page = await cma.changes(cursor, limit)
            assert_well_formed(page)
            assert len(page.entries) <= limit
            assert page.feed_id == whole.feed_id and page.since == cursor
            collected.extend(page.entries)
            cursor, pages = page.next, pages + 1
            # "more" is true exactly when something follows this page.
            assert page.more == (len(collected) < len(whole.entries)), (limit, pages)
            if not page.more:
                break
        assert collected == whole.entries, limit
        assert pages == max(1, -(-len(whole.entries) // limit))
    end = await cma.changes(whole.next, 10)
    assert (end.entries, end.next, end.more) == ([], whole.next, False)
    beyond = await cma.changes(whole.next + 1000, 10)
    assert (beyond.entries, beyond.next, beyond.more) == ([], whole.next + 1000, False)


async def test_feed_limits_are_clamped_and_cursor_checked(node: RunningNode, tmp_path: Path) -> None:
    cma = cma_of(node.client)
    for i in range(3):
        await add_file(node, tmp_path, f"Clip {i}")
    assert len((await cma.changes(0, 0)).entries) == 1
    assert len((await cma.changes(0, -5)).entries) == 1
    assert len((await cma.changes(0, 10**9)).entries) == len((await cma.changes(0, 5000)).entries)
    with pytest.raises(InvalidInput):
        await cma.changes(-1, 10)


async def test_feed_id_survives_a_restart(node: RunningNode, tmp_path: Path) -> None:
    cma = cma_of(node.client)
    item = await add_file(node, tmp_path, "Before Restart")
    feed_id, last = cma.feed_id, (await cma.changes(0, 5000)).next
    assert len(feed_id) >= 16
    await node.client.close()
    for _ in range(2):
        client = TestClient(TestServer(create_app(node.config, node.identity), host="127.0.0.1", port=free_port()))
        await client.start_server()
        try:
            again = cma_of(client)
            assert again.feed_id == feed_id
            assert (await again.changes(0, 5000)).next == last
            async with client.patch(
                f"/api/v1/items/{item['id']}", json={"title": "After Restart"}, headers=node.auth
            ) as resp:
                assert resp.status == 200
            page = await again.changes(last, 10)
            assert [e.id for e in page.entries] == [item["id"]]
            assert page.entries[0].seq > last
            last = page.next
        finally:
            await client.close()


# -- the wire format of a page ------------------------------------------------------------

OWNER = NodeIdentity.generate().node_id
OTHER = NodeIdentity.generate().node_id


def item_json(item_id: str, title: str = "A Title", node: str = OWNER, **extra: Any) -> dict[str, Any]:
    return {
        "id": item_id,
        "node": node,
        "title": title,
        "kind": "video",
        "mime": "video/mp4",
        "size": 1234,
        "content_hash": "ab" * 32,
        "block_size": 1 << 20,
        "manifest_hash": "cd" * 32,
        "has_poster": False,
        "visibility": "network",
        "created_at": 1700000000.0,
        "updated_at": 1700000001.5,
        "duration": 12.5,
        "width": 640,
        "height": 360,
        "video_codec": "h264",
        "audio_codec": None,
        "container": "mp4",
        "warning": None,
        **extra,
    }


def item_id(n: int) -> str:
    return base64.b32encode(n.to_bytes(16, "big")).decode().lower().rstrip("=")


def upsert(seq: int, n: int, title: str = "A Title", **extra: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "entity": "item",
        "op": "upsert",
        "id": item_id(n),
        "item": item_json(item_id(n), title, **extra),
    }


def delete(seq: int, n: int) -> dict[str, Any]:
    return {"seq": seq, "entity": "item", "op": "delete", "id": item_id(n)}


def page_json(entries: list[dict[str, Any]], since: int = 0, **extra: Any) -> dict[str, Any]:
    last = entries[-1]["seq"] if entries else since
    return {
        "node": OWNER,
        "feed_id": "f" * 32,
        "since": since,
        "next": last,
        "more": False,
        "entries": entries,
        **extra,
    }


def good_page() -> dict[str, Any]:
    return page_json([upsert(1, 1, "One"), upsert(2, 2, "Two"), delete(5, 3)])


def test_a_good_page_parses_and_round_trips() -> None:
    page = FeedPage.from_json(good_page())
    assert [(e.seq, e.op, e.id) for e in page.entries] == [
        (1, "upsert", item_id(1)),
        (2, "upsert", item_id(2)),
        (5, "delete", item_id(3)),
    ]
    assert page.entries[0].item is not None and page.entries[0].item.title == "One"
    assert FeedPage.from_json(page.to_json()) == page
    assert FeedPage.from_json(page_json([], since=7)).next == 7


def broken(change: str) -> dict[str, Any]:
    """The good page with one thing wrong, described in ``change``."""
    data = good_page()
    entry, item = data["entries"][0], data["entries"][0]["item"]
    match change.split(":"):
        case ["page", "not-an-object"]:
            return [data]  # type: ignore[return-value]
        case ["page", "missing", key]:
            del data[key]
        case ["page", "type", key, kind]:
            data[key] = {"str": "1", "int": 1, "float": 1.0, "bool": True, "null": None, "list": [1], "dict": {}}[kind]
        case ["entry", "not-an-object"]:
            data["entries"][0] = "upsert"
        case ["entry", "missing", key]:
            del entry[key]
        case ["entry", "type", key, kind]:
            entry[key] = {"str": "1", "int": 1, "bool": True, "null": None, "float": 1.5}[kind]
        case ["entry", "value", key, value]:
            entry[key] = value
        case ["item", "missing", key]:
            del item[key]
        case ["item", "type", key, kind]:
            item[key] = {"str": "1", "int": 1, "bool": True, "null": None, "list": [], "float": 1.5}[kind]
        case ["item", "value", key, value]:
            item[key] = int(value) if value.lstrip("-").isdigit() else value
        case _:
            raise AssertionError(change)
    return data


@pytest.mark.parametrize(
    "change",
    [
        "page:not-an-object",
        *[f"page:missing:{k}" for k in ("node", "feed_id", "since", "next", "more", "entries")],
        "page:type:node:int",
        "page:type:feed_id:null",
        "page:type:since:str",
        "page:type:since:float",
        "page:type:since:bool",
        "page:type:next:str",
        "page:type:more:str",
        "page:type:more:int",
        "page:type:entries:dict",
        "page:type:entries:str",
        "entry:not-an-object",
        *[f"entry:missing:{k}" for k in ("seq", "entity", "op", "id", "item")],
        "entry:type:seq:str",
        "entry:type:seq:bool",
        "entry:type:seq:float",
        "entry:type:entity:int",
        "entry:type:op:null",
        "entry:type:id:int",
        "entry:value:entity:comment",
        "entry:value:op:replace",
        "entry:value:id:" + "z" * 26,
        *[f"item:missing:{k}" for k in ("id", "node", "title", "kind", "mime", "size", "content_hash", "visibility")],
        *[f"item:missing:{k}" for k in ("block_size", "manifest_hash", "has_poster", "created_at", "updated_at")],
        "item:type:title:int",
        "item:type:size:str",
        "item:type:size:float",
        "item:type:size:bool",
        "item:type:has_poster:int",
        "item:type:created_at:str",
        "item:type:duration:str",
        "item:type:width:float",
        "item:type:video_codec:int",
        "item:value:kind:movie",
        "item:value:size:-1",
        "item:value:content_hash:xyz",
        "item:value:manifest_hash:" + "AB" * 32,
        "item:value:id:" + "c" * 26,
        "item:value:id:../../etc/passwd",
        f"item:value:node:{OTHER}",
    ],
)
def test_bad_pages_are_rejected_whole(change: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        FeedPage.from_json(broken(change))
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    "entries",
    [
        [upsert(2, 1), upsert(1, 2)],  # decreasing
        [upsert(2, 1), upsert(2, 2)],  # repeated
        [upsert(1, 1), delete(3, 2), upsert(3, 3)],
    ],
)
def test_sequence_numbers_must_increase(entries: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidInput, match="increasing"):
        FeedPage.from_json(page_json(entries))


def test_entries_must_follow_the_cursor() -> None:
    with pytest.raises(InvalidInput, match="increasing"):
        FeedPage.from_json(page_json([upsert(5, 1), upsert(6, 2)], since=5))
    with pytest.raises(InvalidInput, match="increasing"):
        FeedPage.from_json(page_json([upsert(0, 1)]))
    assert len(FeedPage.from_json(page_json([upsert(6, 1)], since=5)).entries) == 1


def test_cursor_must_not_go_backwards() -> None:
    with pytest.raises(InvalidInput, match="backwards"):
        FeedPage.from_json(page_json([upsert(1, 1), upsert(4, 2)], next=3))
    with pytest.raises(InvalidInput, match="backwards"):
        FeedPage.from_json(page_json([], since=10, next=9))
    # Jumping ahead over numbers this reader may not see is fine.
    assert FeedPage.from_json(page_json([upsert(1, 1)], next=40)).next == 40


def test_more_without_progress_is_rejected() -> None:
    """A page that says "more" but does not move the cursor would make a reader loop forever."""
    with pytest.raises(InvalidInput, match="more"):
        FeedPage.from_json(page_json([], since=3, more=True))
    assert FeedPage.from_json(page_json([], since=3, next=9, more=True)).more


def test_oversized_pages_are_rejected() -> None:
    entries = [upsert(i + 1, i) for i in range(11)]
    assert len(FeedPage.from_json(page_json(entries), limit=11).entries) == 11
    with pytest.raises(InvalidInput, match="more than the 10"):
        FeedPage.from_json(page_json(entries), limit=10)
    with pytest.raises(InvalidInput, match="more than"):
        FeedPage.from_json(page_json([delete(i + 1, i) for i in range(5001)]))


def test_entries_naming_another_owner_are_rejected() -> None:
    entries = [upsert(1, 1), upsert(2, 2, node=OTHER)]
    with pytest.raises(InvalidInput, match="another node"):
        FeedPage.from_json(page_json(entries))


@pytest.mark.parametrize(
    "extra",
    [
        {"mime": "video/" + "x" * 200},
        {"title": "nul\u0000byte"},
        {"visibility": "network\u0000"},
    ],
)
def test_item_values_a_database_cannot_hold_are_rejected(extra: dict[str, Any]) -> None:
    """SQLite would take these; PostgreSQL would fail mid-page. Both must refuse them up front."""
    with pytest.raises(InvalidInput):
        FeedPage.from_json(page_json([upsert(1, 1, **extra)]))


def test_feed_ids_a_database_cannot_hold_are_rejected() -> None:
    with pytest.raises(InvalidInput):
        FeedPage.from_json(page_json([], feed_id="f" * 65))


# -- the registry follows a feed ------------------------------------------------------------


class NoPeers:
    """A PeerDirectory for a registry that only follows the sources a test gives it."""

    async def active_peers(self) -> list[Peer]:
        return []

    async def apply_roster_events(self, events: Sequence[RosterEvent], source: str) -> int:
        return 0


@dataclass
class Stack:
    """A CMA and a registry on one migrated database, wired by hand (no listener: syncs are explicit)."""

    engine: AsyncEngine
    cma: ContentManager
    registry_store: RegistryStore
    files: Path
    executor: ThreadPoolExecutor
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def registry(self, page_size: int, catch_up_page_size: int | None = None) -> Registry:
        """A registry reading ``page_size`` entries per page (also in a catch-up, unless told otherwise)."""
        return Registry(
            store=self.registry_store,
            own=self.cma_catalog(),
            directory=NoPeers(),
            node_id=self.cma.node_id,
            name="alice",
            url="http://127.0.0.1:1",
            page_size=page_size,
            catch_up_page_size=catch_up_page_size or page_size,
        )

    def cma_catalog(self) -> CmaCatalog:
        return CmaCatalog(self.cma)

    async def sync(self, page_size: int) -> int:
        return await self.registry(page_size).sync_source(self.cma_catalog())

    async def add(self, title: str, visibility: str = "private") -> str:
        path = self.files / f"{next(self.counter)}.txt"
        path.write_text(f"{path.name} {secrets.token_hex(8)}")
        report = await self.cma.ingest_paths([str(path)], title, visibility)
        assert not report.failed, report.failed
        return report.added[0].id

    async def registry_rows(self, node_id: str) -> dict[str, tuple[Any, ...]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(
                    registry_items.c.item_id,
                    registry_items.c.title,
                    registry_items.c.visibility,
                    registry_items.c.kind,
                    registry_items.c.content_hash,
                    registry_items.c.size,
                    registry_items.c.search_text,
                ).where(registry_items.c.node_id == node_id)
            )
            return {r[0]: tuple(r[1:]) for r in rows}

    async def source(self, node_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(registry_sources).where(registry_sources.c.node_id == node_id))).first()
        assert row is not None
        return dict(row._mapping)

    async def fts_rows(self) -> int | None:
        if not db.is_sqlite(str(self.engine.url)):
            return None
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.text("SELECT count(*) FROM registry_fts"))).scalar_one())


class CmaCatalog:
    """The CMA's own feed as a CatalogSource (what the composition root's LocalCatalog does)."""

    def __init__(self, cma: ContentManager) -> None:
        self.cma = cma
        self.node_id = cma.node_id

    async def fetch_changes(self, since: int, limit: int) -> FeedPage:
        return await self.cma.changes(since, limit)


async def expected_rows(cma: ContentManager) -> dict[str, tuple[Any, ...]]:
    items = await cma.list_items(10_000)
    return {
        i.id: (i.title, i.visibility, i.kind, i.content_hash, i.size, search_text(i))
        for i in items  # the registry keeps what the owner publishes, normalized for search
    }


async def wipe(engine: AsyncEngine) -> None:
    """Empty every table (and the SQLite full-text index), for the next hypothesis example."""
    async with engine.begin() as conn:
        for metadata in (registry_metadata, node_metadata):
            for table in reversed(metadata.sorted_tables):
                await conn.execute(sa.delete(table))
        if engine.dialect.name == "sqlite":
            await conn.execute(sa.text("DELETE FROM registry_fts"))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    yield engine
    await engine.dispose()


@asynccontextmanager
async def stack_on(engine: AsyncEngine, folder: Path) -> AsyncIterator[Stack]:
    folder.mkdir(parents=True)
    (folder / "files").mkdir()
    executor = ThreadPoolExecutor(max_workers=2)
    identity = NodeIdentity.generate()
    cma = ContentManager(
        store=CmaStore(engine),
        blobs=BlobStore(folder / "store", 1 << 20, 0),
        executor=executor,
        node_id=identity.node_id,
        node_name="alice",
        node_url="http://127.0.0.1:1",
        hash_workers=1,
    )
    await cma.start()
    registry_store = RegistryStore(engine)
    await registry_store.ensure_source(cma.node_id, "alice", "http://127.0.0.1:1")
    try:
        yield Stack(engine=engine, cma=cma, registry_store=registry_store, files=folder / "files", executor=executor)
    finally:
        executor.shutdown(wait=True)


@pytest.fixture
async def stack(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Stack]:
    async with stack_on(engine, tmp_path / "stack") as s:
        yield s


class ScriptedCatalog:
    """A peer that answers with pages written in advance, parsed as a real peer's would be."""

    def __init__(self, node_id: str, pages: list[dict[str, Any]]) -> None:
        self.node_id = node_id
        self.pages = pages
        self.asked: list[tuple[int, int]] = []

    async def fetch_changes(self, since: int, limit: int) -> FeedPage:
        self.asked.append((since, limit))
        answers = [p for p in self.pages if p["since"] == since]
        assert answers, f"the registry asked from cursor {since}, which this peer has no page for"
        return FeedPage.from_json(copy.deepcopy(answers[0]), limit=limit)


@pytest.fixture
async def mallory(stack: Stack) -> str:
    await stack.registry_store.ensure_source(OWNER, "mallory", "http://127.0.0.1:2")
    good = ScriptedCatalog(OWNER, [page_json([upsert(1, 1, "One"), upsert(2, 2, "Two")])])
    assert await stack.registry(100).sync_source(good) == 2
    return OWNER


async def test_a_malformed_page_changes_nothing(stack: Stack, mallory: str) -> None:
    before = await stack.registry_rows(mallory)
    state = await stack.source(mallory)
    assert {t[0] for t in before.values()} == {"One", "Two"}
    bad_entry = upsert(5, 4, "Four")
    bad_entry["item"]["kind"] = "movie"
    pages = [page_json([upsert(3, 1, "One renamed"), delete(4, 2), bad_entry], since=2)]
    with pytest.raises(InvalidInput):
        await stack.registry(100).sync_source(ScriptedCatalog(mallory, pages))
    assert await stack.registry_rows(mallory) == before
    after = await stack.source(mallory)
    assert (after["cursor"], after["feed_id"]) == (state["cursor"], state["feed_id"]) == (2, "f" * 32)


async def test_a_page_that_fails_half_way_into_the_database_is_rolled_back(
    stack: Stack, mallory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await stack.registry_rows(mallory)
    fts_before = await stack.fts_rows()
    backend = stack.registry_store.search_backend
    calls: list[list[str]] = []

    async def failing_index(conn: Any, node_id: str, item_ids: Sequence[str]) -> None:
        # The rows are already upserted (and the deletion applied) when indexing fails.
        calls.append(list(item_ids))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(backend, "index_items", failing_index)
    pages = [page_json([upsert(3, 1, "One renamed"), upsert(4, 3, "Three"), delete(5, 2)], since=2)]
    with pytest.raises(RuntimeError, match="disk on fire"):
        await stack.registry(100).sync_source(ScriptedCatalog(mallory, pages))
    assert len(calls) == 1 and len(calls[0]) == 2
    assert await stack.registry_rows(mallory) == before
    assert await stack.fts_rows() == fts_before
    assert (await stack.source(mallory))["cursor"] == 2
    monkeypatch.undo()
    await stack.registry(100).sync_source(ScriptedCatalog(mallory, pages))
    assert {t[0] for t in (await stack.registry_rows(mallory)).values()} == {"One renamed", "Three"}


async def test_pages_before_a_bad_one_stay_applied(stack: Stack, mallory: str) -> None:
    pages = [
        page_json([upsert(3, 3, "Three")], since=2, more=True),
        page_json([upsert(4, 4, "Four"), upsert(4, 5, "Five")], since=3),  # repeated seq
    ]
    catalog = ScriptedCatalog(mallory, pages)
    with pytest.raises(InvalidInput, match="increasing"):
        await stack.registry(2).sync_source(catalog)
    assert catalog.asked == [(2, 2), (3, 2)]
    assert {t[0] for t in (await stack.registry_rows(mallory)).values()} == {"One", "Two", "Three"}
    assert (await stack.source(mallory))["cursor"] == 3


async def test_registry_pages_through_the_cma_feed(stack: Stack) -> None:
    ids = [await stack.add(f"Song {i}") for i in range(5)]
    await stack.cma.set_title(ids[0], "Song Zero")
    await stack.cma.remove_item(ids[1])
    assert await stack.sync(page_size=2) > 0
    assert set(await stack.registry_rows(stack.cma.node_id)) == {ids[0], *ids[2:]}
    assert await stack.registry_rows(stack.cma.node_id) == await expected_rows(stack.cma)
    assert await stack.sync(page_size=2) == 0  # nothing new

    # Changes to rows the registry already holds.
    await stack.cma.set_title(ids[2], "Song Two, live")
    await stack.cma.set_visibility(ids[3], "network")
    await stack.cma.remove_item(ids[4])
    await stack.cma.remove_item(ids[0])
    assert await stack.sync(page_size=1) == 4
    rows = await stack.registry_rows(stack.cma.node_id)
    assert set(rows) == {ids[2], ids[3]}
    assert rows[ids[2]][0] == "Song Two, live" and rows[ids[3]][1] == "network"
    assert rows == await expected_rows(stack.cma)
    assert await stack.fts_rows() in (None, 2)
    state = await stack.source(stack.cma.node_id)
    assert state["cursor"] == (await stack.cma.changes(0, 5000)).next
    assert state["feed_id"] == stack.cma.feed_id


async def test_a_rebuilt_feed_replaces_the_rows(stack: Stack, mallory: str) -> None:
    """A new feed_id means the owner started over: its old rows go, the new feed is read from 0."""
    rebuilt = [page_json([], since=2, feed_id="e" * 32), page_json([upsert(1, 7, "Seven")], feed_id="e" * 32)]
    catalog = ScriptedCatalog(mallory, rebuilt)
    await stack.registry(100).sync_source(catalog)
    assert catalog.asked == [(2, 100), (0, 100)]
    assert {t[0] for t in (await stack.registry_rows(mallory)).values()} == {"Seven"}


# -- property: whatever happens, the registry ends up equal to the CMA ----------------------

TITLE = st.text(st.sampled_from("abcdeéÉß xyz-Ω日'\""), min_size=1, max_size=16).filter(lambda t: t.strip())
PEER_IDS = [NodeIdentity.generate().node_id for _ in range(2)]
VISIBILITY = st.sampled_from(["private", "network", f"peers:{PEER_IDS[0]}", f"peers:{PEER_IDS[0]},{PEER_IDS[1]}"])
OPERATION = st.one_of(
    st.tuples(st.just("add"), TITLE),
    st.tuples(st.just("rename"), st.integers(0, 50), TITLE),
    st.tuples(st.just("visibility"), st.integers(0, 50), VISIBILITY),
    st.tuples(st.just("remove"), st.integers(0, 50)),
)
SYNC_AFTER = st.sampled_from([0, 0, 0, 1, 2, 3])  # page size of a sync after the operation; 0: none

examples = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(st.tuples(OPERATION, SYNC_AFTER), max_size=14), final_page_size=st.integers(1, 5))
@example(steps=[(("add", "a"), 1), (("remove", 0), 0)], final_page_size=1)
@example(steps=[(("add", "a"), 0), (("add", "b"), 2), (("rename", 0, "c"), 0), (("remove", 1), 0)], final_page_size=1)
@example(steps=[(("add", "a"), 3), (("visibility", 0, "network"), 1), (("add", "a"), 0)], final_page_size=2)
async def test_registry_converges_to_the_cma(
    engine: AsyncEngine, tmp_path: Path, steps: list[tuple[tuple[Any, ...], int]], final_page_size: int
) -> None:
    await wipe(engine)
    async with stack_on(engine, tmp_path / f"example-{next(examples)}") as stack:
        live: list[str] = []
        for op, sync_page_size in steps:
            match op:
                case ("add", title):
                    live.append(await stack.add(title))
                case ("rename", n, title) if live:
                    await stack.cma.set_title(live[n % len(live)], title)
                case ("visibility", n, visibility) if live:
                    await stack.cma.set_visibility(live[n % len(live)], visibility)
                case ("remove", n) if live:
                    await stack.cma.remove_item(live.pop(n % len(live)))
            if sync_page_size:
                await stack.sync(sync_page_size)
        await stack.sync(final_page_size)
        expected = await expected_rows(stack.cma)
        assert set(expected) == set(live)
        assert await stack.registry_rows(stack.cma.node_id) == expected
        assert (await stack.source(stack.cma.node_id))["cursor"] == (await stack.cma.changes(0, 5000)).next
        fts = await stack.fts_rows()
        assert fts is None or fts == len(expected)


# -- catch-up: larger pages, one page of read-ahead ------------------------------------------


class GatedCatalog(ScriptedCatalog):
    """A peer whose answers for some cursors wait until the test lets them through (or fail)."""

    def __init__(self, node_id: str, pages: list[dict[str, Any]], gates: dict[int, asyncio.Event]) -> None:
        super().__init__(node_id, pages)
        self.gates = gates
        self.failures: dict[int, Exception] = {}
        self.started: dict[int, asyncio.Event] = {since: asyncio.Event() for since in gates}
        self.cancelled: list[int] = []

    async def fetch_changes(self, since: int, limit: int) -> FeedPage:
        if since in self.gates:
            self.started[since].set()
            try:
                await self.gates[since].wait()
            except asyncio.CancelledError:
                self.cancelled.append(since)
                raise
        if since in self.failures:
            self.asked.append((since, limit))
            raise self.failures[since]
        return await super().fetch_changes(since, limit)


def paged(first: int, count: int, per_page: int, since: int = 0) -> list[dict[str, Any]]:
    """``count`` upserts (items ``first``...) as pages of ``per_page``, the cursor moving by one per item."""
    pages = []
    for start in range(0, count, per_page):
        n = min(per_page, count - start)
        entries = [upsert(since + start + i + 1, first + start + i, f"Item {first + start + i}") for i in range(n)]
        pages.append(page_json(entries, since=since + start, more=start + n < count))
    return pages


async def test_a_catch_up_asks_for_large_pages_after_the_first(stack: Stack, mallory: str) -> None:
    """The first request is [sync] page_size (a poll with nothing new stays small); once the peer
    says there is more, the registry asks for pages of the largest size a node serves."""
    pages = [*paged(10, 2, 2, since=2), *paged(12, 7, 5, since=4)]
    pages[0]["more"] = True
    catalog = ScriptedCatalog(mallory, pages)
    registry = stack.registry(2, catch_up_page_size=5)
    assert await registry.sync_source(catalog) == 9
    assert catalog.asked == [(2, 2), (4, 5), (9, 5)]
    assert len(await stack.registry_rows(mallory)) == 11
    # By default the catch-up pages are as large as a node serves.
    default = Registry(
        store=stack.registry_store,
        own=stack.cma_catalog(),
        directory=NoPeers(),
        node_id=stack.cma.node_id,
        name="alice",
        url="http://127.0.0.1:1",
        page_size=2,
    )
    catalog = ScriptedCatalog(mallory, [page_json([upsert(12, 30)], since=11, more=True), page_json([], since=12)])
    await default.sync_source(catalog)
    assert catalog.asked == [(11, 2), (12, MAX_PAGE)]


async def test_the_next_page_is_fetched_while_one_is_applied(
    stack: Stack, mallory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()
    catalog = GatedCatalog(mallory, paged(10, 4, 2, since=2), {4: gate})
    store = stack.registry_store
    real_apply = store.apply_page
    applied: list[int] = []

    async def apply_page(node_id: str, page: FeedPage, *, reset: bool) -> int:
        if page.since == 2:
            # Page 2 is asked for before page 1 is in the database; let it through.
            await asyncio.wait_for(catalog.started[4].wait(), timeout=10)
            assert applied == []
            gate.set()
        applied.append(page.since)
        return await real_apply(node_id, page, reset=reset)

    monkeypatch.setattr(store, "apply_page", apply_page)
    assert await stack.registry(2).sync_source(catalog) == 4
    assert applied == [2, 4]
    assert (await stack.source(mallory))["cursor"] == 6


async def test_a_read_ahead_that_fails_leaves_the_page_before_it_applied(stack: Stack, mallory: str) -> None:
    gate = asyncio.Event()
    catalog = GatedCatalog(mallory, paged(10, 4, 2, since=2), {4: gate})
    catalog.failures[4] = PeerUnreachable("cannot reach mallory: connection reset")
    gate.set()
    with pytest.raises(PeerUnreachable):
        await stack.registry(2).sync_source(catalog)
    rows = await stack.registry_rows(mallory)
    assert {t[0] for t in rows.values()} == {"One", "Two", "Item 10", "Item 11"}
    assert (await stack.source(mallory))["cursor"] == 4
    assert await stack.fts_rows() in (None, 4)
    # The next sync goes on from there.
    catalog.failures.clear()
    assert await stack.registry(2).sync_source(catalog) == 2
    assert (await stack.source(mallory))["cursor"] == 6


async def test_a_page_that_fails_to_apply_stops_the_read_ahead(
    stack: Stack, mallory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await stack.registry_rows(mallory)
    fts_before = await stack.fts_rows()
    gate = asyncio.Event()  # never set: the read-ahead is still waiting when the apply fails
    catalog = GatedCatalog(mallory, paged(10, 4, 2, since=2), {4: gate})
    backend = stack.registry_store.search_backend

    async def failing_index(conn: Any, node_id: str, item_ids: Sequence[str]) -> None:
        await asyncio.wait_for(catalog.started[4].wait(), timeout=10)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(backend, "index_items", failing_index)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await stack.registry(2).sync_source(catalog)
    assert catalog.cancelled == [4]
    assert await stack.registry_rows(mallory) == before
    assert await stack.fts_rows() == fts_before
    assert (await stack.source(mallory))["cursor"] == 2


async def test_the_last_entry_for_an_item_decides(stack: Stack, mallory: str) -> None:
    """A page naming an item twice (a feed should not, but a peer might) ends as its last entry says."""
    pages = [
        page_json([upsert(3, 1, "One again"), delete(4, 1), delete(5, 2), upsert(6, 2, "Two again")], since=2),
    ]
    await stack.registry(100).sync_source(ScriptedCatalog(mallory, pages))
    rows = await stack.registry_rows(mallory)
    assert {t[0] for t in rows.values()} == {"Two again"}
    assert await stack.fts_rows() in (None, 1)
    assert [h.item.title for h in await stack.registry(100).search("again")] == ["Two again"]


async def test_a_page_for_a_source_removed_meanwhile_is_not_applied(stack: Stack, mallory: str) -> None:
    page = FeedPage.from_json(page_json([upsert(3, 3, "Three")], since=2))
    await stack.registry_store.reconcile_sources(stack.cma.node_id, [])  # mallory is no longer a member
    with pytest.raises(PrivNetworkError, match="unknown source"):
        await stack.registry_store.apply_page(mallory, page, reset=False)
    assert await stack.registry_rows(mallory) == {}
    assert await stack.fts_rows() in (None, 0)


# -- rounds: an idle round reads and writes (almost) nothing ------------------------------------


class Members:
    """A PeerDirectory whose members a test sets."""

    def __init__(self, peers: list[Peer]) -> None:
        self.peers = peers

    async def active_peers(self) -> list[Peer]:
        return list(self.peers)

    async def apply_roster_events(self, events: Sequence[RosterEvent], source: str) -> int:
        return 0


class FakePeers:
    """Stands in for the PeerClient: each member answers its catalog from scripted pages."""

    def __init__(self) -> None:
        self.items: dict[str, list[dict[str, Any]]] = {}
        self.down: set[str] = set()
        self.polls: list[str] = []

    async def get(self, base_url: str, path: str, *, signed: bool = True) -> Any:
        node_id = base_url.rsplit("/", 1)[-1]
        self.polls.append(node_id)
        if node_id in self.down:
            raise PeerUnreachable(f"cannot reach {base_url}: connection refused")
        since = int(parse_qs(urlsplit(path).query)["since"][0])
        entries = [e for e in self.items.get(node_id, []) if e["seq"] > since]
        page = page_json(entries, since=since, node=node_id)
        if entries:
            for entry in entries:
                entry["item"]["node"] = node_id
        return copy.deepcopy(page)


class CountingStore(RegistryStore):
    """The registry's store, counting the calls an idle round should not make."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def apply_page(self, node_id: str, page: FeedPage, *, reset: bool) -> int:
        self._count("apply_page")
        return await super().apply_page(node_id, page, reset=reset)

    async def reconcile_sources(self, own: str, peers: Sequence[Peer]) -> list[str]:
        self._count("reconcile_sources")
        return await super().reconcile_sources(own, peers)

    async def get_source(self, node_id: str) -> dict[str, Any] | None:
        self._count("get_source")
        return await super().get_source(node_id)

    async def mark_synced(self, synced: dict[str, float]) -> None:
        self._count("mark_synced")
        await super().mark_synced(synced)


async def test_an_idle_round_writes_once_and_reconciles_only_a_changed_roster(stack: Stack) -> None:
    peers = [Peer(node_id=NodeIdentity.generate().node_id, name=f"peer{i}", url="") for i in range(3)]
    peers = [dataclasses.replace(p, url=f"http://127.0.0.1:9/{p.node_id}") for p in peers]
    members = Members(peers)
    client = FakePeers()
    store = CountingStore(stack.engine)
    registry = Registry(
        store=store,
        own=stack.cma_catalog(),
        directory=members,
        node_id=stack.cma.node_id,
        name="alice",
        url="http://127.0.0.1:1",
        page_size=100,
    )
    registry.set_client(cast(PeerClient, client))
    client.items[peers[0].node_id] = [upsert(1, 1, "Ein"), upsert(2, 2, "Zwei")]
    await stack.add("Local one")
    first = await registry.sync_all()
    assert first == {stack.cma.node_id: 1, peers[0].node_id: 2, peers[1].node_id: 0, peers[2].node_id: 0}
    assert store.calls["reconcile_sources"] == 1

    store.calls.clear()
    before = {p.node_id: (await stack.source(p.node_id))["last_sync_at"] for p in peers}
    second = await registry.sync_all()
    assert second == dict.fromkeys(first, 0)
    # Nothing new anywhere: no page applied, no roster work, no source read, one write for the round.
    assert store.calls == {"mark_synced": 1}
    for p in peers:
        state = await stack.source(p.node_id)
        assert state["last_sync_at"] > before[p.node_id] and state["online"]
    assert {p["node_id"]: p["items"] for p in await registry.peers()} == {
        peers[0].node_id: 2,
        peers[1].node_id: 0,
        peers[2].node_id: 0,
    }

    # A member leaves: the next round drops its source and its rows.
    store.calls.clear()
    members.peers = peers[1:]
    await registry.sync_all()
    assert store.calls["reconcile_sources"] == 1
    assert await stack.registry_rows(peers[0].node_id) == {}
    assert {s["node_id"] for s in await store.list_sources()} == {stack.cma.node_id, peers[1].node_id, peers[2].node_id}


async def test_a_peer_that_fails_then_answers_with_nothing_new_is_online_again(stack: Stack) -> None:
    peer = Peer(node_id=NodeIdentity.generate().node_id, name="bob", url="")
    peer = dataclasses.replace(peer, url=f"http://127.0.0.1:9/{peer.node_id}")
    client = FakePeers()
    registry = Registry(
        store=stack.registry_store,
        own=stack.cma_catalog(),
        directory=Members([peer]),
        node_id=stack.cma.node_id,
        name="alice",
        url="http://127.0.0.1:1",
        page_size=100,
    )
    registry.set_client(cast(PeerClient, client))
    await registry.sync_all()
    client.down.add(peer.node_id)
    assert str((await registry.sync_all())[peer.node_id]).startswith("error: cannot reach")
    state = await stack.source(peer.node_id)
    assert (state["online"], state["failures"]) == (False, 1) and state["next_retry_at"] is not None
    # A scheduled round leaves it alone while it is backed off; a forced one polls it.
    client.polls.clear()
    await registry.sync_all(force=False)
    assert client.polls == []
    client.down.clear()
    assert (await registry.sync_all())[peer.node_id] == 0
    state = await stack.source(peer.node_id)
    assert (state["online"], state["failures"], state["next_retry_at"], state["last_error"]) == (True, 0, None, None)
    [listed] = await registry.peers()
    assert listed["online"] and listed["failures"] == 0 and listed["last_error"] is None
