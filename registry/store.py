"""Every query the registry makes, one named async method each."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from priv_network.errors import PrivNetworkError
from priv_network.interfaces import Peer, SearchFilters
from priv_network.wire import CommentInfo, FeedPage, ItemInfo
from registry.models import comments, copies, entries, history, outbox, sources, view_totals
from registry.search import Hit, backend_for, filters_clause, normalize, query_words

# Words joined by a hyphen, apostrophe or dot: "Spider-Man", "Ocean's", "S.H.I.E.L.D."
_JOINED = re.compile(r"\w+(?:[-'\u2019.]\w+)+")


def search_text(item: ItemInfo) -> str:
    """What search matches: the title, the show, the genres and the year.

    A joined word is also indexed run together, so "spiderman" finds "Spider-Man"
    as "spider man" does.
    """
    parts = [item.title, item.show or "", " ".join(item.genres), str(item.year or "")]
    joined = [normalize(m).replace(" ", "") for p in parts[:2] for m in _JOINED.findall(p) if not m[0].isdigit()]
    return normalize(" ".join(p for p in parts + joined if p))


def item_row(node_id: str, item: ItemInfo) -> dict[str, Any]:
    """An item as a ``registry_items`` row."""
    return {
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


_ROW_KEYS = tuple(item_row("", ItemInfo("", "", "", "", "", 0, "", 0, "", False, "", 0.0, 0.0)))


class RegistryStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.search_backend = backend_for(self.dialect)
        self._insert = sqlite_insert if self.dialect == "sqlite" else pg_insert
        upsert = self._insert(entries)
        # Insert or update a page of items in one executemany.
        self._upsert = upsert.on_conflict_do_update(
            index_elements=[entries.c.node_id, entries.c.item_id],
            set_={k: getattr(upsert.excluded, k) for k in _ROW_KEYS if k not in ("node_id", "item_id")},
        )
        # On SQLite the rows go to the driver's executemany as tuples, in the
        # order of the statement SQLAlchemy compiled for them: its per-row
        # parameter processing was a third of the cost of the upsert. The
        # values are already what the columns store (str, int, float, bool, None).
        self._upsert_sql: str | None = None
        self._upsert_order: tuple[str, ...] = ()
        if self.dialect == "sqlite":
            compiled = self._upsert.compile(dialect=engine.dialect, column_keys=list(_ROW_KEYS))
            self._upsert_sql = str(compiled)
            self._upsert_order = tuple(compiled.positiontup or ())

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
        """Apply one verified feed page atomically; returns how many rows changed.

        Raises ``PrivNetworkError`` (and changes nothing) if ``node_id`` is no
        longer a source, e.g. because the member was removed meanwhile.
        """
        changed = 0
        backend = self.search_backend
        async with self.engine.begin() as conn:
            if reset:
                await self._drop_rows(conn, node_id)
            # The last entry for an item decides (a well-formed feed has one per item).
            items: dict[str, ItemInfo | None] = {}
            thread_rows: dict[str, dict[str, Any] | None] = {}  # comments: a row, or None for a deletion
            totals: dict[str, int | None] = {}  # view totals per item
            for entry in page.entries:
                if entry.entity == "roster":
                    continue
                if entry.entity == "comment":
                    c = entry.comment
                    thread_rows[entry.id] = None if c is None else _comment_row(node_id, c)
                    continue
                if entry.entity == "views":
                    totals[entry.id] = entry.total
                    continue
                if entry.entity == "copy":
                    await conn.execute(
                        sa.delete(copies).where(copies.c.node_id == node_id, copies.c.content_hash == entry.id)
                    )
                    if entry.op == "upsert":
                        await conn.execute(sa.insert(copies).values(node_id=node_id, content_hash=entry.id))
                    changed += 1
                    continue
                items[entry.id] = entry.item
            changed += await self._apply_community(conn, node_id, thread_rows, totals)
            deletes = [item_id for item_id, item in items.items() if item is None]
            upserts = [item_row(node_id, item) for item in items.values() if item is not None]
            changed += await self._delete_items(conn, node_id, deletes)
            if upserts:
                ids = [row["item_id"] for row in upserts]
                if not reset:  # after a reset there is nothing to unindex
                    await backend.unindex_items(conn, node_id, ids)
                if self._upsert_sql is not None:
                    order = self._upsert_order
                    await conn.exec_driver_sql(self._upsert_sql, [tuple(map(r.__getitem__, order)) for r in upserts])
                else:
                    await conn.execute(self._upsert, upserts)
                await backend.index_items(conn, node_id, ids)
                changed += len(upserts)
            result = await conn.execute(
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
            if result.rowcount != 1:
                raise PrivNetworkError(f"unknown source {node_id}")  # rolls the page back
        return changed

    async def mark_synced(self, synced: dict[str, float]) -> None:
        """Sources that answered with nothing new: online, no failures, last synced at the given times.

        One statement for a whole round of idle polls (a page that changes
        something is recorded by ``apply_page`` with its rows).
        """
        if not synced:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(sources)
                .where(sources.c.node_id == sa.bindparam("source"))
                .values(
                    online=True,
                    last_sync_at=sa.bindparam("at"),
                    failures=0,
                    next_retry_at=None,
                    last_error=None,
                ),
                [{"source": node_id, "at": at} for node_id, at in synced.items()],
            )

    async def _drop_rows(self, conn: AsyncConnection, node_id: str) -> None:
        """Everything a node published (its items, their index entries, copies, comments, views)."""
        await self.search_backend.unindex_items(conn, node_id, None)
        await conn.execute(sa.delete(entries).where(entries.c.node_id == node_id))
        await conn.execute(sa.delete(copies).where(copies.c.node_id == node_id))
        await conn.execute(sa.delete(comments).where(comments.c.node_id == node_id))
        await conn.execute(sa.delete(view_totals).where(view_totals.c.node_id == node_id))

    async def _delete_items(self, conn: AsyncConnection, node_id: str, item_ids: list[str]) -> int:
        """Remove items (and their comments and views) in bulk."""
        removed = 0
        for start in range(0, len(item_ids), 500):
            chunk = item_ids[start : start + 500]
            await self.search_backend.unindex_items(conn, node_id, chunk)
            result = await conn.execute(
                sa.delete(entries).where(entries.c.node_id == node_id, entries.c.item_id.in_(chunk))
            )
            removed += result.rowcount
            await conn.execute(sa.delete(comments).where(comments.c.node_id == node_id, comments.c.item_id.in_(chunk)))
            await conn.execute(
                sa.delete(view_totals).where(view_totals.c.node_id == node_id, view_totals.c.item_id.in_(chunk))
            )
        return removed

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
                await self._drop_rows(conn, node_id)
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
    async def _apply_community(
        self,
        conn: AsyncConnection,
        node_id: str,
        thread_rows: dict[str, dict[str, Any] | None],
        totals: dict[str, int | None],
    ) -> int:
        """A page's comments and view totals: old rows out and new rows in, a statement per 500 of each."""
        ids = list(thread_rows)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            await conn.execute(
                sa.delete(comments).where(comments.c.node_id == node_id, comments.c.comment_id.in_(chunk))
            )
        new_rows = [row for row in thread_rows.values() if row is not None]
        if new_rows:
            await conn.execute(sa.insert(comments), new_rows)
        item_ids = list(totals)
        for start in range(0, len(item_ids), 500):
            chunk = item_ids[start : start + 500]
            await conn.execute(
                sa.delete(view_totals).where(view_totals.c.node_id == node_id, view_totals.c.item_id.in_(chunk))
            )
        new_totals = [{"node_id": node_id, "item_id": k, "total": n} for k, n in totals.items() if n is not None]
        if new_totals:
            await conn.execute(sa.insert(view_totals), new_totals)
        return len(thread_rows) + len(totals)

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

    async def outbox_hold(self, node_id: str, error: str, until: float) -> None:
        """A delivery to ``node_id`` failed: every message for it due before ``until`` waits until then.

        They are due again together, so they still go out oldest first: a reply
        never reaches the owner before the comment it answers.
        """
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(outbox)
                .where(outbox.c.node_id == node_id, outbox.c.attempts >= 0, outbox.c.next_attempt_at < until)
                .values(attempts=outbox.c.attempts + 1, last_error=error[:300], next_attempt_at=until)
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


def _comment_row(node_id: str, c: CommentInfo) -> dict[str, Any]:
    """A published comment as a ``registry_comments`` row."""
    return {
        "node_id": node_id,
        "comment_id": c.id,
        "item_id": c.item,
        "parent_id": c.parent,
        "depth": c.depth,
        "author": c.author,
        "author_node": c.author_node,
        "author_node_name": c.author_node_name,
        "body": c.body,
        "created_at": c.created_at,
        "edited_at": c.edited_at,
        "deleted": c.deleted,
    }
