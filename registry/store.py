"""Every query the registry makes, one named async method each."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from priv_network.interfaces import Peer, SearchFilters
from priv_network.wire import FeedPage, ItemInfo
from registry.models import comments, copies, entries, history, outbox, sources, view_totals
from registry.search import Hit, backend_for, filters_clause, normalize, query_words


def search_text(item: ItemInfo) -> str:
    """What search matches: the title, the show, the genres and the year."""
    parts = [item.title, item.show or "", " ".join(item.genres), str(item.year or "")]
    return normalize(" ".join(p for p in parts if p))


class RegistryStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.search_backend = backend_for(self.dialect)
        self._insert = sqlite_insert if self.dialect == "sqlite" else pg_insert

    async def ensure_source(self, node_id: str, name: str, url: str) -> None:
        async with self.engine.begin() as conn:
            stmt = self._insert(sources).values(node_id=node_id, name=name, url=url)
            await conn.execute(
                stmt.on_conflict_do_update(index_elements=[sources.c.node_id], set_={"name": name, "url": url})
            )

    async def get_source(self, node_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(sources).where(sources.c.node_id == node_id))).mappings().first()
        return dict(row) if row else None

    async def list_sources(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(sources).order_by(sources.c.name))
            return [dict(r) for r in rows.mappings()]

    async def apply_page(self, node_id: str, page: FeedPage, *, reset: bool) -> int:
        """Apply one verified feed page atomically; returns how many rows changed."""
        changed = 0
        backend = self.search_backend
        async with self.engine.begin() as conn:
            if reset:
                old = [r[0] for r in await conn.execute(sa.select(entries.c.id).where(entries.c.node_id == node_id))]
                await backend.unindex(conn, old)
                await conn.execute(sa.delete(entries).where(entries.c.node_id == node_id))
                await conn.execute(sa.delete(copies).where(copies.c.node_id == node_id))
                await conn.execute(sa.delete(comments).where(comments.c.node_id == node_id))
                await conn.execute(sa.delete(view_totals).where(view_totals.c.node_id == node_id))
            upserts: list[dict[str, Any]] = []
            deletes: list[str] = []
            for entry in page.entries:
                if entry.entity == "roster":
                    continue
                if entry.entity == "comment":
                    await conn.execute(
                        sa.delete(comments).where(comments.c.node_id == node_id, comments.c.comment_id == entry.id)
                    )
                    if entry.comment is not None:
                        c = entry.comment
                        await conn.execute(
                            sa.insert(comments).values(
                                node_id=node_id,
                                comment_id=c.id,
                                item_id=c.item,
                                parent_id=c.parent,
                                depth=c.depth,
                                author=c.author,
                                author_node=c.author_node,
                                author_node_name=c.author_node_name,
                                body=c.body,
                                created_at=c.created_at,
                                edited_at=c.edited_at,
                                deleted=c.deleted,
                            )
                        )
                    changed += 1
                    continue
                if entry.entity == "views":
                    await conn.execute(
                        sa.delete(view_totals).where(
                            view_totals.c.node_id == node_id, view_totals.c.item_id == entry.id
                        )
                    )
                    if entry.total is not None:
                        await conn.execute(
                            sa.insert(view_totals).values(node_id=node_id, item_id=entry.id, total=entry.total)
                        )
                    changed += 1
                    continue
                if entry.entity == "copy":
                    await conn.execute(
                        sa.delete(copies).where(copies.c.node_id == node_id, copies.c.content_hash == entry.id)
                    )
                    if entry.op == "upsert":
                        await conn.execute(sa.insert(copies).values(node_id=node_id, content_hash=entry.id))
                    changed += 1
                    continue
                if entry.item is None:
                    deletes.append(entry.id)
                    continue
                item = entry.item
                upserts.append(
                    {
                        "node_id": node_id,
                        "item_id": item.id,
                        "title": item.title,
                        "kind": item.kind,
                        "mime": item.mime,
                        "size": item.size,
                        "duration": item.duration,
                        "width": item.width,
                        "height": item.height,
                        "content_hash": item.content_hash,
                        "block_size": item.block_size,
                        "manifest_hash": item.manifest_hash,
                        "has_poster": item.has_poster,
                        "visibility": item.visibility,
                        "created_at": item.created_at,
                        "updated_at": item.updated_at,
                        "search_text": search_text(item),
                        "description": item.description,
                        "year": item.year,
                        "genres": ",".join(item.genres) or None,
                        "show": item.show,
                        "season": item.season,
                        "episode": item.episode,
                        "source": item.source[:16],
                    }
                )
            changed += await self._delete_items(conn, node_id, deletes)
            changed += await self._upsert_items(conn, node_id, upserts)
            await conn.execute(
                sa.update(sources)
                .where(sources.c.node_id == node_id)
                .values(
                    feed_id=page.feed_id,
                    cursor=page.next,
                    online=True,
                    last_sync_at=time.time(),
                    failures=0,
                    next_retry_at=None,
                    last_error=None,
                )
            )
        return changed

    async def _delete_items(self, conn: AsyncConnection, node_id: str, item_ids: list[str]) -> int:
        """Remove items (and their comments and views) in bulk."""
        removed = 0
        for start in range(0, len(item_ids), 500):
            chunk = item_ids[start : start + 500]
            ids = [
                r[0]
                for r in await conn.execute(
                    sa.select(entries.c.id).where(entries.c.node_id == node_id, entries.c.item_id.in_(chunk))
                )
            ]
            if ids:
                await self.search_backend.unindex(conn, ids)
                await conn.execute(sa.delete(entries).where(entries.c.id.in_(ids)))
                removed += len(ids)
            await conn.execute(sa.delete(comments).where(comments.c.node_id == node_id, comments.c.item_id.in_(chunk)))
            await conn.execute(
                sa.delete(view_totals).where(view_totals.c.node_id == node_id, view_totals.c.item_id.in_(chunk))
            )
        return removed

    async def _upsert_items(self, conn: AsyncConnection, node_id: str, rows: list[dict[str, Any]]) -> int:
        """Insert or update items in bulk (one statement per page), then index their text."""
        if not rows:
            return 0
        stmt = self._insert(entries)
        stmt = stmt.on_conflict_do_update(
            index_elements=[entries.c.node_id, entries.c.item_id],
            set_={k: getattr(stmt.excluded, k) for k in rows[0] if k not in ("node_id", "item_id")},
        )
        await conn.execute(stmt, rows)
        texts = {r["item_id"]: r["search_text"] for r in rows}
        indexed: list[tuple[int, str]] = []
        item_ids = list(texts)
        for start in range(0, len(item_ids), 500):
            chunk = item_ids[start : start + 500]
            found = await conn.execute(
                sa.select(entries.c.id, entries.c.item_id).where(
                    entries.c.node_id == node_id, entries.c.item_id.in_(chunk)
                )
            )
            indexed.extend((rowid, texts[item_id]) for rowid, item_id in found)
        await self.search_backend.index_many(conn, indexed)
        return len(rows)

    async def record_failure(self, node_id: str, error: str, next_retry_at: float | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(sources)
                .where(sources.c.node_id == node_id)
                .values(
                    online=False,
                    failures=sources.c.failures + 1,
                    last_error=error[:500],
                    next_retry_at=next_retry_at,
                )
            )

    async def search(self, query: str, limit: int, filters: SearchFilters | None) -> list[Hit]:
        async with self.engine.connect() as conn:
            return await self.search_backend.search(conn, query_words(query), limit, filters)

    async def recent(self, limit: int, filters: SearchFilters | None = None) -> list[Hit]:
        query = (
            sa.select(*entries.c, sources.c.name.label("source_name"), sources.c.online.label("source_online"))
            .select_from(entries.outerjoin(sources, sources.c.node_id == entries.c.node_id))
            .order_by(entries.c.created_at.desc(), entries.c.id.desc())
            .limit(limit)
        )
        query = query.where(*filters_clause(filters))
        async with self.engine.connect() as conn:
            out = []
            for row in (await conn.execute(query)).mappings():
                data = dict(row)
                out.append(
                    Hit(row=data, source_name=data.pop("source_name") or "", online=bool(data.pop("source_online")))
                )
            return out

    async def reconcile_sources(self, own: str, peers: Sequence[Peer]) -> list[str]:
        """Make the sources the active members (plus this node); drop everyone else and their rows."""
        wanted = {p.node_id: p for p in peers}
        dropped = []
        async with self.engine.begin() as conn:
            existing = {r[0] for r in await conn.execute(sa.select(sources.c.node_id))}
            for node_id in existing - set(wanted) - {own}:
                old = [r[0] for r in await conn.execute(sa.select(entries.c.id).where(entries.c.node_id == node_id))]
                await self.search_backend.unindex(conn, old)
                await conn.execute(sa.delete(entries).where(entries.c.node_id == node_id))
                await conn.execute(sa.delete(copies).where(copies.c.node_id == node_id))
                await conn.execute(sa.delete(comments).where(comments.c.node_id == node_id))
                await conn.execute(sa.delete(view_totals).where(view_totals.c.node_id == node_id))
                await conn.execute(sa.delete(sources).where(sources.c.node_id == node_id))
                dropped.append(node_id)
            for peer in wanted.values():
                stmt = self._insert(sources).values(node_id=peer.node_id, name=peer.name, url=peer.url)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[sources.c.node_id], set_={"name": peer.name, "url": peer.url}
                    )
                )
        return dropped

    async def reset_backoff(self, node_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(sources)
                .where(sources.c.node_id == node_id, sa.or_(sources.c.failures > 0, sources.c.online.is_(False)))
                .values(failures=0, next_retry_at=None, online=True)
            )
            return bool(result.rowcount)

    async def item_counts(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(entries.c.node_id, sa.func.count()).group_by(entries.c.node_id))
            return {r[0]: int(r[1]) for r in rows}

    async def entry_by_item(self, item_id: str) -> Hit | None:
        """The registry row for an item ID, with its owner's name and state."""
        query = (
            sa.select(
                *entries.c,
                sources.c.name.label("source_name"),
                sources.c.online.label("source_online"),
                sources.c.url.label("source_url"),
            )
            .select_from(entries.join(sources, sources.c.node_id == entries.c.node_id))
            .where(entries.c.item_id == item_id)
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        data = dict(row)
        return Hit(row=data, source_name=data.pop("source_name") or "", online=bool(data.pop("source_online")))

    async def holders(self, hashes: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """For each content hash, the members holding a copy (name, URL, online)."""
        out: dict[str, list[dict[str, Any]]] = {}
        if not hashes:
            return out
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(copies.c.content_hash, sources.c.node_id, sources.c.name, sources.c.url, sources.c.online)
                .join(sources, sources.c.node_id == copies.c.node_id)
                .where(copies.c.content_hash.in_(list(set(hashes))))
                .order_by(sources.c.online.desc(), sources.c.name)
            )
            for row in rows.mappings():
                out.setdefault(row["content_hash"], []).append(
                    {"node_id": row["node_id"], "name": row["name"], "url": row["url"], "online": bool(row["online"])}
                )
        return out

    # -- community ------------------------------------------------------------
    async def thread(self, node_id: str, item_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(comments)
                .where(comments.c.node_id == node_id, comments.c.item_id == item_id)
                .order_by(comments.c.created_at, comments.c.comment_id)
            )
            return [dict(r) for r in rows.mappings()]

    async def comment(self, comment_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(sa.select(comments).where(comments.c.comment_id == comment_id))).mappings().first()
            )
        return dict(row) if row else None

    async def view_totals(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        if not keys:
            return {}
        item_ids = list({k[1] for k in keys})
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(view_totals.c.node_id, view_totals.c.item_id, view_totals.c.total).where(
                    view_totals.c.item_id.in_(item_ids)
                )
            )
            return {(r[0], r[1]): int(r[2]) for r in rows}

    async def enqueue(self, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(outbox).values(**values))

    async def outbox_due(self, now: float, node_id: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        query = sa.select(outbox).where(outbox.c.next_attempt_at <= now, outbox.c.attempts >= 0)
        if node_id is not None:
            query = query.where(outbox.c.node_id == node_id)
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(outbox.c.created_at, outbox.c.id).limit(limit))
            return [dict(r) for r in rows.mappings()]

    async def outbox_all(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(outbox).order_by(outbox.c.created_at, outbox.c.id))
            return [dict(r) for r in rows.mappings()]

    async def outbox_done(self, ids: Sequence[str]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(outbox).where(outbox.c.id.in_(list(ids))))

    async def outbox_rejected(self, message_id: str, error: str) -> None:
        """A final refusal by the owner: kept (attempts -1) so the author sees why, never retried."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(outbox).where(outbox.c.id == message_id).values(attempts=-1, last_error=error[:300])
            )

    async def outbox_retry(self, ids: Sequence[str], error: str, delay_for: Any) -> None:
        async with self.engine.begin() as conn:
            rows = await conn.execute(sa.select(outbox.c.id, outbox.c.attempts).where(outbox.c.id.in_(list(ids))))
            for message_id, attempts in list(rows):
                await conn.execute(
                    sa.update(outbox)
                    .where(outbox.c.id == message_id)
                    .values(
                        attempts=attempts + 1,
                        last_error=error[:300],
                        next_attempt_at=time.time() + delay_for(attempts),
                    )
                )

    async def outbox_reschedule(self, node_id: str) -> None:
        """The owner is back: retry its messages now."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(outbox).where(outbox.c.node_id == node_id, outbox.c.attempts >= 0).values(next_attempt_at=0)
            )

    async def history_get(self, user: str, node_id: str, item_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(history).where(
                            history.c.user == user, history.c.node_id == node_id, history.c.item_id == item_id
                        )
                    )
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    async def history_put(self, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.delete(history).where(
                    history.c.user == values["user"],
                    history.c.node_id == values["node_id"],
                    history.c.item_id == values["item_id"],
                )
            )
            await conn.execute(sa.insert(history).values(**values))

    async def history_for(self, user: str, limit: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(history).where(history.c.user == user).order_by(history.c.updated_at.desc()).limit(limit)
            )
            return [dict(r) for r in rows.mappings()]
