"""The owner's community tables in bulk: views and comments stored many at a time, each once.

``CmaStore.add_views`` and ``CmaStore.insert_comments`` take a whole inbox
delivery in one transaction. What must not change with the batching: a
receipt or comment ID seen before never counts or publishes again (a
replayed or retried delivery), totals are exact, and the feed gets one
entry per item per batch (totals, not one entry per view). Runs on SQLite,
and on PostgreSQL with ``PRIV_NETWORK_TEST_PG``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from node.models import changes, comments, item_views, view_receipts
from node.store import CmaStore
from priv_network import db


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[CmaStore]:
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    try:
        yield CmaStore(engine)
    finally:
        await engine.dispose()


async def add_item(store: CmaStore, item_id: str) -> None:
    content_hash = secrets.token_hex(32)
    blob = {"hash": content_hash, "size": 1, "block_size": 1, "manifest": b"x", "manifest_hash": content_hash}
    item = {
        "id": item_id,
        "content_hash": content_hash,
        "title": item_id,
        "kind": "other",
        "mime": "application/octet-stream",
        "size": 1,
        "visibility": "network",
        "source": "local",
        "original_name": item_id,
    }
    await store.add_item(blob, item, None)


async def feed(store: CmaStore, entity: str) -> list[tuple[int, str]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(changes.c.seq, changes.c.entity_id).where(changes.c.entity == entity).order_by(changes.c.seq)
        )
        return [(r[0], r[1]) for r in rows]


async def count(store: CmaStore, table: sa.Table) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


def receipt(item_id: str) -> tuple[str, str, float]:
    return (secrets.token_hex(16), item_id, time.time())


# -- views ------------------------------------------------------------------------------


async def test_a_batch_of_views_counts_each_receipt_once_with_one_feed_entry_per_item(store: CmaStore) -> None:
    batch = [receipt("i1") for _ in range(700)] + [receipt("i2") for _ in range(300)]
    batch += batch[:50]  # the same receipts twice in one delivery
    assert await store.add_views(batch) == {"i1": 700, "i2": 300}
    assert await count(store, view_receipts) == 1000
    assert sorted(i for _seq, i in await feed(store, "views")) == ["i1", "i2"]

    # A replayed delivery: nothing counts, nothing is republished.
    seqs = await feed(store, "views")
    assert await store.add_views(batch) == {}
    assert await feed(store, "views") == seqs
    assert await store.view_totals(["i1", "i2", "i3"]) == {"i1": 700, "i2": 300}


async def test_a_later_batch_raises_the_totals_and_moves_only_its_items_in_the_feed(store: CmaStore) -> None:
    first = [receipt("i1"), receipt("i2"), receipt("i3")]
    await store.add_views(first)
    before = dict((i, seq) for seq, i in await feed(store, "views"))

    # Half replayed, half new: only the new ones count.
    second = [first[0], receipt("i1"), receipt("i1"), first[2]]
    assert await store.add_views(second) == {"i1": 3}
    after = dict((i, seq) for seq, i in await feed(store, "views"))
    assert after["i2"] == before["i2"] and after["i3"] == before["i3"]
    assert after["i1"] > max(before.values())  # one entry, renumbered: readers fetch the new total
    async with store.engine.connect() as conn:
        totals = dict((await conn.execute(sa.select(item_views.c.item_id, item_views.c.total))).all())
    assert totals == {"i1": 3, "i2": 1, "i3": 1}


async def test_no_views_no_change(store: CmaStore) -> None:
    assert await store.add_views([]) == {}
    assert await feed(store, "views") == []


# -- comments ---------------------------------------------------------------------------


def comment_row(item_id: str, n: int, **changes: Any) -> dict[str, Any]:
    return {
        "id": f"{n:032x}",
        "item_id": item_id,
        "parent_id": None,
        "depth": 0,
        "author": "ann",
        "author_node": "NODE",
        "author_node_name": "beta",
        "body": f"comment {n}",
        "created_at": 1000.0 + n,
        "edited_at": None,
        "deleted": False,
        **changes,
    }


async def test_comments_are_stored_together_once_each_in_order(store: CmaStore) -> None:
    item_id = "a" * 26
    await add_item(store, item_id)
    rows = [comment_row(item_id, n) for n in range(1, 301)]
    assert await store.insert_comments(rows) == [r["id"] for r in rows]
    published = await feed(store, "comment")
    assert [i for _seq, i in published] == [r["id"] for r in rows]  # feed order = delivery order

    # Redelivered (with other text, even): skipped, not replaced, not republished.
    again = [comment_row(item_id, 5, body="rewritten"), comment_row(item_id, 301)]
    assert await store.insert_comments(again) == [f"{301:032x}"]
    assert (await store.get_comment(f"{5:032x}") or {})["body"] == "comment 5"
    assert (await feed(store, "comment"))[:-1] == published
    assert await count(store, comments) == 301
    assert await store.insert_comment(comment_row(item_id, 301)) is False
    assert await store.insert_comments([]) == []


async def test_comments_by_id_finds_only_stored_ones(store: CmaStore) -> None:
    item_id = "b" * 26
    await add_item(store, item_id)
    await store.insert_comments([comment_row(item_id, n) for n in range(1, 1201)])
    wanted = [f"{n:032x}" for n in range(1150, 1260)]
    found = await store.comments_by_id(wanted)
    assert sorted(found) == [f"{n:032x}" for n in range(1150, 1201)]
    assert found[f"{1200:032x}"]["body"] == "comment 1200"
    assert await store.comments_by_id([]) == {}
