"""Every query the CMA makes, one named async method each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from node.models import (
    api_tokens,
    blobs,
    changes,
    comments,
    downloads,
    invites,
    item_views,
    items,
    login_history,
    members,
    node_meta,
    pins,
    roster_events,
    shares,
    source_files,
    traffic,
    uploads,
    users,
    view_receipts,
)

_ITEM_COLUMNS = [*items.c, blobs.c.block_size, blobs.c.manifest_hash, blobs.c.poster, blobs.c.external_path]


class CmaStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Feed writes are serialized so that sequence numbers are committed in
        # order: a reader can never see seq N+1 before seq N is visible.
        self._feed_lock = asyncio.Lock()

    @asynccontextmanager
    async def feed_transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self._feed_lock, self.engine.begin() as conn:
            yield conn

    # -- meta ---------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(node_meta.c.value).where(node_meta.c.key == key))).scalar()

    async def set_meta(self, key: str, value: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(node_meta).where(node_meta.c.key == key))
            await conn.execute(sa.insert(node_meta).values(key=key, value=value))

    # -- source files (skip re-hashing unchanged files) ---------------------
    async def source_files_for(self, paths: Sequence[str]) -> dict[str, tuple[int, int, str]]:
        found: dict[str, tuple[int, int, str]] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(paths), 500):
                chunk = paths[start : start + 500]
                rows = await conn.execute(
                    sa.select(
                        source_files.c.path, source_files.c.size, source_files.c.mtime_ns, source_files.c.content_hash
                    ).where(source_files.c.path.in_(chunk))
                )
                for path, size, mtime_ns, content_hash in rows:
                    found[path] = (size, mtime_ns, content_hash)
        return found

    async def items_by_hashes(self, hashes: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = list(set(hashes))
        out: dict[str, dict[str, Any]] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = await conn.execute(
                    sa.select(*_ITEM_COLUMNS)
                    .join(blobs, blobs.c.hash == items.c.content_hash)
                    .where(items.c.content_hash.in_(chunk))
                )
                for row in rows.mappings():
                    out[row["content_hash"]] = dict(row)
        return out

    # -- items --------------------------------------------------------------
    async def add_item(
        self,
        blob: dict[str, Any],
        item: dict[str, Any],
        source: tuple[str, int, int] | None,
    ) -> tuple[dict[str, Any], bool]:
        """Record a stored blob and its item; returns (item row, created).

        If an item already holds this content, it is returned unchanged: the
        same content is one item on a node.
        """
        now = time.time()
        async with self.feed_transaction() as conn:
            existing = await self._item_by_hash(conn, blob["hash"])
            if existing is None:
                has_blob = (await conn.execute(sa.select(blobs.c.hash).where(blobs.c.hash == blob["hash"]))).scalar()
                if has_blob is None:
                    await conn.execute(sa.insert(blobs).values(**blob, created_at=now))
                await conn.execute(sa.insert(items).values(**item, created_at=now, updated_at=now))
                await self._record_change(conn, "item", item["id"], "upsert", now)
            if source is not None:
                path, size, mtime_ns = source
                await conn.execute(sa.delete(source_files).where(source_files.c.path == path))
                await conn.execute(
                    sa.insert(source_files).values(path=path, size=size, mtime_ns=mtime_ns, content_hash=blob["hash"])
                )
            row = existing or await self._item_by_hash(conn, blob["hash"])
        assert row is not None
        return row, existing is None

    async def _item_by_hash(self, conn: AsyncConnection, content_hash: str) -> dict[str, Any] | None:
        row = (
            (
                await conn.execute(
                    sa.select(*_ITEM_COLUMNS)
                    .join(blobs, blobs.c.hash == items.c.content_hash)
                    .where(items.c.content_hash == content_hash)
                )
            )
            .mappings()
            .first()
        )
        return dict(row) if row else None

    async def get_item(self, item_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(*_ITEM_COLUMNS)
                        .join(blobs, blobs.c.hash == items.c.content_hash)
                        .where(items.c.id == item_id)
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    async def list_items(self, limit: int, offset: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(*_ITEM_COLUMNS)
                .join(blobs, blobs.c.hash == items.c.content_hash)
                .order_by(items.c.created_at.desc(), items.c.id)
                .limit(limit)
                .offset(offset)
            )
            return [dict(r) for r in rows.mappings()]

    async def update_item(self, item_id: str, values: dict[str, Any]) -> bool:
        now = time.time()
        async with self.feed_transaction() as conn:
            result = await conn.execute(sa.update(items).where(items.c.id == item_id).values(**values, updated_at=now))
            if result.rowcount == 0:
                return False
            await self._record_change(conn, "item", item_id, "upsert", now)
        return True

    async def delete_item(self, item_id: str) -> str | None:
        """Delete the item; returns its content hash if no item references it any more."""
        now = time.time()
        async with self.feed_transaction() as conn:
            content_hash = (await conn.execute(sa.select(items.c.content_hash).where(items.c.id == item_id))).scalar()
            if content_hash is None:
                return None
            await conn.execute(sa.delete(items).where(items.c.id == item_id))
            await self._record_change(conn, "item", item_id, "delete", now)
            still_used = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(items).where(items.c.content_hash == content_hash)
                )
            ).scalar_one()
            if still_used:
                return None
            await conn.execute(sa.delete(source_files).where(source_files.c.content_hash == content_hash))
            await conn.execute(sa.delete(blobs).where(blobs.c.hash == content_hash))
            return str(content_hash)

    async def replace_item_content(
        self,
        item_id: str,
        old_hash: str,
        blob: dict[str, Any],
        values: dict[str, Any],
        source: tuple[str, int, int],
    ) -> bool:
        """Give an item the new content of its changed file, keeping its ID; the old blob row goes.

        Refused (False, nothing written) if the item no longer holds ``old_hash``, another item
        already holds the new content, or another file still has the old content.
        """
        now = time.time()
        path, size, mtime_ns = source
        async with self.feed_transaction() as conn:
            current = (await conn.execute(sa.select(items.c.content_hash).where(items.c.id == item_id))).scalar()
            taken = (await conn.execute(sa.select(items.c.id).where(items.c.content_hash == blob["hash"]))).first()
            other_files = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(source_files)
                    .where(source_files.c.content_hash == old_hash, source_files.c.path != path)
                )
            ).scalar_one()
            if current != old_hash or taken is not None or other_files:
                return False
            if (await conn.execute(sa.select(blobs.c.hash).where(blobs.c.hash == blob["hash"]))).first() is None:
                await conn.execute(sa.insert(blobs).values(**blob, created_at=now))
            await conn.execute(
                sa.update(items)
                .where(items.c.id == item_id)
                .values(**values, content_hash=blob["hash"], updated_at=now)
            )
            await self._record_change(conn, "item", item_id, "upsert", now)
            await conn.execute(sa.delete(source_files).where(source_files.c.path == path))
            await conn.execute(
                sa.insert(source_files).values(path=path, size=size, mtime_ns=mtime_ns, content_hash=blob["hash"])
            )
            await conn.execute(sa.delete(blobs).where(blobs.c.hash == old_hash))
        return True

    async def stats(self) -> tuple[int, int]:
        """(items, bytes in the content store): this node's own blobs (not files a Plex import
        references in place) and its pinned copies, complete or as far as they are verified."""
        own = sa.select(sa.func.coalesce(sa.func.sum(blobs.c.size), 0)).where(blobs.c.external_path.is_(None))
        pinned = sa.select(
            sa.func.coalesce(
                sa.func.sum(sa.case((pins.c.state == "complete", pins.c.size), else_=pins.c.verified_bytes)), 0
            )
        ).where(pins.c.content_hash.not_in(sa.select(blobs.c.hash)))
        async with self.engine.connect() as conn:
            size = int((await conn.execute(own)).scalar_one()) + int((await conn.execute(pinned)).scalar_one())
            count = (await conn.execute(sa.select(sa.func.count()).select_from(items))).scalar_one()
        return int(count), size

    async def get_manifest(self, content_hash: str) -> bytes | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(blobs.c.manifest).where(blobs.c.hash == content_hash))).scalar()

    # -- the changes feed ---------------------------------------------------
    async def _record_change(self, conn: AsyncConnection, entity: str, entity_id: str, op: str, at: float) -> None:
        await conn.execute(sa.delete(changes).where(changes.c.entity == entity, changes.c.entity_id == entity_id))
        await conn.execute(sa.insert(changes).values(entity=entity, entity_id=entity_id, op=op, at=at))

    async def changes_since(self, since: int, limit: int) -> list[tuple[int, str, str, str, dict[str, Any] | None]]:
        """(seq, entity, op, id, item or roster-event row or None) after ``since``, in order."""
        query = (
            sa.select(
                changes.c.seq,
                changes.c.entity,
                changes.c.op,
                changes.c.entity_id,
                *_ITEM_COLUMNS,
                roster_events.c.body.label("event_body"),
                roster_events.c.sig.label("event_sig"),
                pins.c.state.label("copy_state"),
                pins.c.visibility.label("copy_visibility"),
                *[c.label(f"comment_{c.name}") for c in comments.c],
                item_views.c.total.label("views_total"),
            )
            .select_from(
                changes.outerjoin(items, sa.and_(changes.c.entity == "item", items.c.id == changes.c.entity_id))
                .outerjoin(blobs, blobs.c.hash == items.c.content_hash)
                .outerjoin(
                    roster_events,
                    sa.and_(changes.c.entity == "roster", roster_events.c.id == changes.c.entity_id),
                )
                .outerjoin(pins, sa.and_(changes.c.entity == "copy", pins.c.content_hash == changes.c.entity_id))
                .outerjoin(comments, sa.and_(changes.c.entity == "comment", comments.c.id == changes.c.entity_id))
                .outerjoin(
                    item_views, sa.and_(changes.c.entity == "views", item_views.c.item_id == changes.c.entity_id)
                )
            )
            .where(changes.c.seq > since)
            .order_by(changes.c.seq)
            .limit(limit)
        )
        out = []
        async with self.engine.connect() as conn:
            result = await conn.execute(query)
            # Plain rows and one dict(zip()) each: a RowMapping per row, copied
            # key by key, was a third of the cost of serving a catch-up page.
            keys = list(result.keys())
            present_at = [keys.index(k) for k in ("id", "event_body", "copy_state", "comment_id", "views_total")]
            for row in result:
                seq, entity, op, entity_id = row[0], row[1], row[2], row[3]
                payload = None
                if op == "upsert" and any(row[i] is not None for i in present_at):
                    payload = dict(zip(keys, row, strict=True))
                out.append((seq, entity, op, entity_id, payload))
        return out

    async def last_seq(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.coalesce(sa.func.max(changes.c.seq), 0)))).scalar_one())

    # -- API tokens ---------------------------------------------------------
    async def insert_token(self, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(api_tokens).values(**values))

    async def token_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(sa.select(api_tokens).where(api_tokens.c.token_hash == token_hash)))
                .mappings()
                .first()
            )
        return dict(row) if row else None

    async def touch_token(self, token_id: str, at: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.update(api_tokens).where(api_tokens.c.id == token_id).values(last_used_at=at))

    async def delete_token_by_hash(self, token_hash: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(api_tokens).where(api_tokens.c.token_hash == token_hash))

    async def list_tokens(self, now: float) -> list[dict[str, Any]]:
        """Every token that still works (never its hash), oldest first."""
        columns = [c for c in api_tokens.c if c.name != "token_hash"]
        query = sa.select(*columns).where(_live_token(now)).order_by(api_tokens.c.created_at, api_tokens.c.id)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    async def revoke_token(self, token_id: str, now: float) -> tuple[dict[str, Any] | None, bool]:
        """Delete a token unless it is the last working owner API token (a session does not count).

        Returns (its row or None, whether it was deleted). The caller serializes revocations,
        so two of them cannot each leave the other as the last owner token and remove both.
        """
        async with self.engine.begin() as conn:
            row = (await conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id))).mappings().first()
            if row is None:
                return None, False
            if row["admin"] and row["kind"] != "session":
                other_owner_token = sa.select(api_tokens.c.id).where(
                    api_tokens.c.id != token_id,
                    api_tokens.c.admin == sa.true(),
                    api_tokens.c.kind != "session",
                    _live_token(now),
                )
                if (await conn.execute(other_owner_token.limit(1))).first() is None:
                    return dict(row), False
            await conn.execute(sa.delete(api_tokens).where(api_tokens.c.id == token_id))
            return dict(row), True

    # -- the group network --------------------------------------------------
    async def list_members(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(members).order_by(members.c.name, members.c.node_id))
            return [dict(r) for r in rows.mappings()]

    async def roster_events_all(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(roster_events).order_by(roster_events.c.at, roster_events.c.id))
            return [dict(r) for r in rows.mappings()]

    async def has_roster_event(self, event_id: str) -> bool:
        async with self.engine.connect() as conn:
            found = await conn.execute(sa.select(roster_events.c.id).where(roster_events.c.id == event_id))
            return found.first() is not None

    async def add_roster_event(self, event: dict[str, Any], member: dict[str, Any] | None) -> bool:
        """Store a verified event (once) and, if it is now the latest for its subject, the member state."""
        async with self.feed_transaction() as conn:
            seen = await conn.execute(sa.select(roster_events.c.id).where(roster_events.c.id == event["id"]))
            if seen.first() is not None:
                return False
            await conn.execute(sa.insert(roster_events).values(**event))
            await self._record_change(conn, "roster", event["id"], "upsert", time.time())
            if member is not None and await self._roster_event_decides(conn, event, member):
                await conn.execute(sa.delete(members).where(members.c.node_id == member["node_id"]))
                await conn.execute(sa.insert(members).values(**member))
            return True

    @staticmethod
    async def _roster_event_decides(conn: AsyncConnection, event: dict[str, Any], member: dict[str, Any]) -> bool:
        """Does this event set the member's state? The latest event does, with two exceptions.

        A node's own announcement of itself never outranks its removal, whatever their
        dates (it may have heard of the removal late, or not at all), and cannot bring a
        removed node back. Only an "add" by another member (an invite made after the
        removal) can, and a removal older than such an add no longer applies.
        """
        current = (
            await conn.execute(
                sa.select(members.c.event_at, members.c.event_id, members.c.active).where(
                    members.c.node_id == member["node_id"]
                )
            )
        ).first()
        newer = current is None or (member["event_at"], member["event_id"]) > (current[0], current[1])
        subject = event["subject"]
        if event["type"] == "remove":
            rejoined = await conn.execute(
                sa.select(roster_events.c.id)
                .where(
                    roster_events.c.subject == subject,
                    roster_events.c.type == "add",
                    roster_events.c.signer != subject,
                    sa.or_(
                        roster_events.c.at > event["at"],
                        sa.and_(roster_events.c.at == event["at"], roster_events.c.id > event["id"]),
                    ),
                )
                .limit(1)
            )
            return rejoined.first() is None
        if event["type"] == "add" and event["signer"] == subject and current is not None and not current[2]:
            return False
        return newer

    async def touch_member(self, node_id: str, at: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.update(members).where(members.c.node_id == node_id).values(last_seen_at=at))

    async def insert_invite(self, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(invites).values(**values))

    async def use_invite(self, invite_id: str, check: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Atomically check an invite with ``check(row)`` and spend one use; None if unknown."""
        async with self.feed_transaction() as conn:
            row = (
                (await conn.execute(sa.select(invites).where(invites.c.id == invite_id).with_for_update()))
                .mappings()
                .first()
            )
            if row is None:
                return None
            check(dict(row))
            await conn.execute(
                sa.update(invites).where(invites.c.id == invite_id).values(uses_left=invites.c.uses_left - 1)
            )
            return dict(row)

    # -- pins -----------------------------------------------------------------
    async def get_pin(self, content_hash: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(pins).where(pins.c.content_hash == content_hash))).mappings().first()
        return dict(row) if row else None

    async def list_pins(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(pins).order_by(pins.c.created_at))
            return [dict(r) for r in rows.mappings()]

    async def insert_pin(self, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(pins).values(**values))

    async def update_pin(self, content_hash: str, values: dict[str, Any], *, publish: bool = False) -> None:
        """Update a pin; ``publish`` records the change in the feed (the copy's state or audience changed)."""
        if not publish:
            async with self.engine.begin() as conn:
                await conn.execute(sa.update(pins).where(pins.c.content_hash == content_hash).values(**values))
            return
        async with self.feed_transaction() as conn:
            await conn.execute(sa.update(pins).where(pins.c.content_hash == content_hash).values(**values))
            await self._record_change(conn, "copy", content_hash, "upsert", time.time())

    async def delete_pin(self, content_hash: str) -> bool:
        """Forget a pin; True if its blob is not also a local item's (so the file may go)."""
        async with self.feed_transaction() as conn:
            await conn.execute(sa.delete(pins).where(pins.c.content_hash == content_hash))
            await self._record_change(conn, "copy", content_hash, "delete", time.time())
            used = (await conn.execute(sa.select(blobs.c.hash).where(blobs.c.hash == content_hash))).first()
            return used is None

    # -- share links --------------------------------------------------------
    async def insert_share(self, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(shares).values(**values))

    async def get_share(self, share_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(shares).where(shares.c.id == share_id))).mappings().first()
        return dict(row) if row else None

    async def list_shares(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(shares, items.c.title, items.c.size)
                .join(items, items.c.id == shares.c.item_id)
                .order_by(shares.c.created_at)
            )
            return [dict(r) for r in rows.mappings()]

    async def revoke_share(self, share_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.update(shares).where(shares.c.id == share_id).values(revoked=True))
            return bool(result.rowcount)

    async def count_share_download(self, share_id: str) -> bool:
        """Use one download of a link, atomically; False if none is left."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(shares)
                .where(
                    shares.c.id == share_id,
                    sa.or_(shares.c.max_downloads.is_(None), shares.c.downloads < shares.c.max_downloads),
                )
                .values(downloads=shares.c.downloads + 1)
            )
            return bool(result.rowcount)

    # -- traffic --------------------------------------------------------------
    async def add_traffic(self, hour: int, subject: str, direction: str, n: int) -> None:
        stmt = self._insert_on_conflict(traffic).values(hour=hour, subject=subject, direction=direction, bytes=n)
        stmt = stmt.on_conflict_do_update(
            index_elements=[traffic.c.hour, traffic.c.subject, traffic.c.direction],
            set_={"bytes": traffic.c.bytes + n},
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def traffic_totals(self) -> list[tuple[str, str, int]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(traffic.c.subject, traffic.c.direction, sa.func.sum(traffic.c.bytes)).group_by(
                    traffic.c.subject, traffic.c.direction
                )
            )
            return [(r[0], r[1], int(r[2])) for r in rows]

    async def traffic_since(self, hour: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(traffic).where(traffic.c.hour >= hour).order_by(traffic.c.hour))
            return [dict(r) for r in rows.mappings()]

    # -- community ------------------------------------------------------------
    async def get_comment(self, comment_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(comments).where(comments.c.id == comment_id))).mappings().first()
        return dict(row) if row else None

    async def item_comments(self, item_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(comments).where(comments.c.item_id == item_id).order_by(comments.c.created_at, comments.c.id)
            )
            return [dict(r) for r in rows.mappings()]

    async def comments_by_id(self, comment_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored comments among ``comment_ids``, by ID (one query per 500)."""
        wanted = list(set(comment_ids))
        out: dict[str, dict[str, Any]] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                rows = await conn.execute(sa.select(comments).where(comments.c.id.in_(wanted[start : start + 500])))
                for row in rows.mappings():
                    out[row["id"]] = dict(row)
        return out

    async def insert_comment(self, values: dict[str, Any]) -> bool:
        """Store a new comment once (its ID is the author's idempotency key)."""
        return bool(await self.insert_comments([values]))

    async def insert_comments(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """Store new comments in one feed transaction, each once; returns the IDs stored now, in order.

        A comment ID already stored (a redelivery) is skipped, not replaced and not republished.
        """
        if not rows:
            return []
        async with self.feed_transaction() as conn:
            stmt = (
                self._insert_on_conflict(comments)
                .on_conflict_do_nothing(index_elements=[comments.c.id])
                .returning(comments.c.id)
            )
            stored = {r[0] for r in await conn.execute(stmt, list(rows))}
            new = [r["id"] for r in rows if r["id"] in stored]
            await self._record_changes(conn, "comment", new, time.time())
        return new

    async def update_comment(self, comment_id: str, values: dict[str, Any]) -> None:
        async with self.feed_transaction() as conn:
            await conn.execute(sa.update(comments).where(comments.c.id == comment_id).values(**values))
            await self._record_change(conn, "comment", comment_id, "upsert", time.time())

    async def add_views(self, receipts: Sequence[tuple[str, str, float]]) -> dict[str, int]:
        """Count view deliveries not seen before; returns the new totals of the items that changed.

        One transaction: the receipts are inserted in bulk (a receipt ID already stored
        is skipped: redelivered views never count twice), each item's total is raised
        with one upsert, and each changed item gets one feed entry, whatever the number
        of views.
        """
        unique = {receipt_id: (item_id, at) for receipt_id, item_id, at in receipts}
        if not unique:
            return {}
        params = [{"id": rid, "item_id": item_id, "at": at} for rid, (item_id, at) in unique.items()]
        counted = self._insert_on_conflict(view_receipts).on_conflict_do_nothing(index_elements=[view_receipts.c.id])
        counted = counted.returning(view_receipts.c.item_id)
        async with self.feed_transaction() as conn:
            counts: dict[str, int] = {}
            for start in range(0, len(params), 1000):
                for (item_id,) in await conn.execute(counted, params[start : start + 1000]):
                    counts[item_id] = counts.get(item_id, 0) + 1
            if not counts:
                return {}
            raise_total = self._insert_on_conflict(item_views)
            raise_total = raise_total.on_conflict_do_update(
                index_elements=[item_views.c.item_id], set_={"total": item_views.c.total + raise_total.excluded.total}
            ).returning(item_views.c.item_id, item_views.c.total)
            rows = await conn.execute(raise_total, [{"item_id": k, "total": n} for k, n in sorted(counts.items())])
            changed = {item_id: int(total) for item_id, total in rows}
            await self._record_changes(conn, "views", sorted(changed), time.time())
        return changed

    def _insert_on_conflict(self, table: sa.Table) -> Any:
        """An INSERT that can take ON CONFLICT, in this database's dialect."""
        return (sqlite_insert if self.engine.dialect.name == "sqlite" else pg_insert)(table)

    async def _record_changes(self, conn: AsyncConnection, entity: str, entity_ids: Sequence[str], at: float) -> None:
        """``_record_change`` for many entities at once: each gets one new feed entry, in the given order."""
        if not entity_ids:
            return
        for start in range(0, len(entity_ids), 500):
            chunk = list(entity_ids[start : start + 500])
            await conn.execute(sa.delete(changes).where(changes.c.entity == entity, changes.c.entity_id.in_(chunk)))
        await conn.execute(
            sa.insert(changes), [{"entity": entity, "entity_id": i, "op": "upsert", "at": at} for i in entity_ids]
        )

    async def view_totals(self, item_ids: Sequence[str]) -> dict[str, int]:
        if not item_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(item_views.c.item_id, item_views.c.total).where(item_views.c.item_id.in_(list(item_ids)))
            )
            return {r[0]: int(r[1]) for r in rows}

    async def republish_item_extras(self, item_id: str) -> None:
        """Renumber an item's comments and view total, so readers get them again (as its audience changed)."""
        async with self.feed_transaction() as conn:
            now = time.time()
            for (comment_id,) in await conn.execute(sa.select(comments.c.id).where(comments.c.item_id == item_id)):
                await self._record_change(conn, "comment", comment_id, "upsert", now)
            has_views = await conn.execute(sa.select(item_views.c.item_id).where(item_views.c.item_id == item_id))
            if has_views.first() is not None:
                await self._record_change(conn, "views", item_id, "upsert", now)

    async def visibilities(self, item_ids: Sequence[str]) -> dict[str, str]:
        if not item_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(items.c.id, items.c.visibility).where(items.c.id.in_(list(set(item_ids))))
            )
            return {r[0]: r[1] for r in rows}

    # -- uploads --------------------------------------------------------------
    async def insert_upload(self, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(uploads).values(**values))

    async def get_upload(self, upload_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(uploads).where(uploads.c.id == upload_id))).mappings().first()
        return dict(row) if row else None

    async def update_upload(self, upload_id: str, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.update(uploads).where(uploads.c.id == upload_id).values(**values))

    async def delete_upload(self, upload_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(uploads).where(uploads.c.id == upload_id))

    async def expired_uploads(self, now: float) -> list[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(uploads.c.id).where(uploads.c.expires_at < now, uploads.c.state == "uploading")
            )
            return [r[0] for r in rows]

    # -- downloads ------------------------------------------------------------
    async def insert_download(self, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(downloads).values(**values))

    async def get_download(self, download_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(downloads).where(downloads.c.id == download_id))).mappings().first()
        return dict(row) if row else None

    async def list_downloads(self, limit: int = 500) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(downloads).order_by(downloads.c.created_at.desc()).limit(limit))
            return [dict(r) for r in rows.mappings()]

    async def downloads_by_url(self, url: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(downloads).where(downloads.c.url == url))
            return [dict(r) for r in rows.mappings()]

    async def next_pending_download(self) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(downloads)
                        .where(downloads.c.state == "pending")
                        .order_by(downloads.c.created_at, downloads.c.id)
                        .limit(1)
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    async def update_download(self, download_id: str, values: dict[str, Any], *, only_if: str | None = None) -> bool:
        query = sa.update(downloads).where(downloads.c.id == download_id)
        if only_if is not None:
            query = query.where(downloads.c.state == only_if)
        async with self.engine.begin() as conn:
            result = await conn.execute(query.values(**values))
            return bool(result.rowcount)

    async def requeue_interrupted_downloads(self) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(downloads)
                .where(downloads.c.state == "processing")
                .values(state="pending", message="resuming after a restart")
            )
            return int(result.rowcount or 0)

    async def delete_download(self, download_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(downloads).where(downloads.c.id == download_id))

    async def source_files_under(self, folder: str) -> list[tuple[str, str]]:
        prefix = folder.rstrip("/") + "/"
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(source_files.c.path, source_files.c.content_hash).where(
                    source_files.c.path.startswith(prefix, autoescape=True)
                )
            )
            return [(r[0], r[1]) for r in rows]

    async def forget_source_file(self, path: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(source_files).where(source_files.c.path == path))

    async def source_files_for_hash(self, content_hash: str) -> list[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(source_files.c.path).where(source_files.c.content_hash == content_hash))
            return [r[0] for r in rows]

    # -- users ----------------------------------------------------------------
    async def count_users(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(users))).scalar_one())

    async def get_user(self, name: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.name == name))).mappings().first()
        return dict(row) if row else None

    async def list_users(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(users.c.name, users.c.admin, users.c.created_at).order_by(users.c.name))
            return [dict(r) for r in rows.mappings()]

    async def insert_user(self, values: dict[str, Any], *, only_if_none: bool = False) -> bool:
        async with self.feed_transaction() as conn:
            if only_if_none and (await conn.execute(sa.select(sa.func.count()).select_from(users))).scalar_one():
                return False
            if (await conn.execute(sa.select(users.c.name).where(users.c.name == values["name"]))).first():
                return False
            await conn.execute(sa.insert(users).values(**values))
            return True

    async def update_user(self, name: str, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.update(users).where(users.c.name == name).values(**values))

    async def record_login(self, user: str, address: str, ok: bool, at: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(login_history).values(user=user, address=address[:64], ok=ok, at=at))

    async def login_history_for(self, user: str, limit: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(login_history)
                .where(login_history.c.user == user)
                .order_by(login_history.c.at.desc())
                .limit(limit)
            )
            return [dict(r) for r in rows.mappings()]


def _live_token(now: float) -> sa.ColumnElement[bool]:
    """A token that has not expired at ``now`` (one without expiry never does)."""
    return sa.or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at >= now)
