"""Comments and view totals on this node's own items: the owner's authoritative copy.

Comments from members arrive through the inbox (signed, with the comment's
ID as idempotency key, so a retried delivery is stored once); this node's
own users' comments on its own items are stored directly. Everything is
published in the changes feed to the peers that may see the item, so every
node shows the same thread in the same order (by creation time, then ID).
View deliveries carry their own IDs too; totals, not single views, are
published, so a feed poll stays small however much is watched.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from node.service import ContentManager, comment_from_row, visible_to
from node.store import CmaStore
from priv_network.errors import Forbidden, InvalidInput, NotFound, PrivNetworkError
from priv_network.wire import COMMENT_ID_RE, ITEM_ID_RE, MAX_COMMENT_DEPTH, CommentInfo, clean_comment_body

log = logging.getLogger(__name__)

MAX_AUTHOR = 64


@dataclass(frozen=True)
class _NewComment:
    """A comment as its author's node sent it, before the owner's checks."""

    comment_id: str
    item_id: str
    parent_id: str | None
    author: str
    body: object
    created_at: float | None


_BATCH: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("community_batch", default=None)


class Community:
    def __init__(self, *, store: CmaStore, cma: ContentManager, max_length: int) -> None:
        self._store = store
        self._cma = cma
        self.max_length = max_length

    async def _changed(self) -> None:
        pending = _BATCH.get()
        if pending is not None:
            pending.append(True)  # told once, when the batch of this request ends
        else:
            await self._cma.notify_changed()

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Apply many messages (an inbox delivery) and tell the rest of the node once, at the end.

        The batch belongs to the current task (a context variable), so requests
        handled at the same time are not held back by it.
        """
        pending: list[bool] = []
        token = _BATCH.set(pending)
        try:
            yield
        finally:
            _BATCH.reset(token)
            if pending:
                await self._cma.notify_changed()

    async def comments(self, item_id: str, viewer: str | None = None) -> list[CommentInfo]:
        item = await self._cma.get_item(item_id)
        if not visible_to(item.visibility, viewer):
            raise NotFound(f"no item {item_id}")
        return [comment_from_row(r) for r in await self._store.item_comments(item_id)]

    async def add(
        self,
        *,
        comment_id: str,
        item_id: str,
        parent_id: str | None,
        author: str,
        author_node: str,
        author_node_name: str,
        body: object,
        viewer: str | None,
        created_at: float | None = None,
    ) -> CommentInfo:
        """Store a comment (once: a known ID returns the stored comment)."""
        new = _NewComment(comment_id, item_id, parent_id, author, body, created_at)
        (row,) = await self._add_many([new], author_node=author_node, author_node_name=author_node_name, viewer=viewer)
        if isinstance(row, PrivNetworkError):
            raise row
        return comment_from_row(row)

    async def _add_many(
        self, new: list[_NewComment], *, author_node: str, author_node_name: str, viewer: str | None
    ) -> list[dict[str, Any] | PrivNetworkError]:
        """Check and store many comments of one author node, in order, in one feed transaction.

        Returns, for each, its stored row (a known ID: the row already stored) or the
        error that refused it. A reply may answer a comment earlier in the same list.
        """
        wanted = [c.comment_id for c in new] + [c.parent_id for c in new if isinstance(c.parent_id, str)]
        known = await self._store.comments_by_id(i for i in wanted if COMMENT_ID_RE.match(i))
        audience = await self._store.visibilities([c.item_id for c in new if ITEM_ID_RE.match(c.item_id)])
        out: list[dict[str, Any] | PrivNetworkError] = []
        rows: list[dict[str, Any]] = []
        for c in new:
            try:
                row = self._check(
                    c,
                    known=known,
                    audience=audience,
                    author_node=author_node,
                    author_node_name=author_node_name,
                    viewer=viewer,
                )
            except PrivNetworkError as exc:
                out.append(exc)
                continue
            if row["id"] not in known:
                known[row["id"]] = row
                rows.append(row)
            out.append(row)
        if rows:
            # A copy delivered twice at the same time is stored once: the store skips known IDs.
            await self._store.insert_comments(rows)
            await self._changed()
        return out

    def _check(
        self,
        c: _NewComment,
        *,
        known: dict[str, dict[str, Any]],
        audience: dict[str, str],
        author_node: str,
        author_node_name: str,
        viewer: str | None,
    ) -> dict[str, Any]:
        """The row to store for ``c`` (or the stored one, for a known ID); raises what refuses it."""
        if not COMMENT_ID_RE.match(c.comment_id):
            raise InvalidInput("bad comment id")
        existing = known.get(c.comment_id)
        if existing is not None:
            if existing["author_node"] != author_node:
                raise Forbidden("that comment ID belongs to another node")
            return existing
        visibility = audience.get(c.item_id)
        if visibility is None or not visible_to(visibility, viewer):
            raise NotFound(f"no item {c.item_id[:64]}")
        depth = 0
        if c.parent_id is not None:
            parent = known.get(c.parent_id)
            if parent is None or parent["item_id"] != c.item_id:
                raise InvalidInput("a reply must answer a comment on the same item")
            depth = int(parent["depth"]) + 1
            if depth > MAX_COMMENT_DEPTH:
                raise InvalidInput(f"replies nest at most {MAX_COMMENT_DEPTH} deep; answer a comment higher up")
        author = " ".join(c.author.split())[:MAX_AUTHOR] or "someone"
        now = time.time()
        return {
            "id": c.comment_id,
            "item_id": c.item_id,
            "parent_id": c.parent_id,
            "depth": depth,
            "author": author,
            "author_node": author_node,
            "author_node_name": author_node_name[:200],
            "body": clean_comment_body(c.body, self.max_length),
            "created_at": min(c.created_at or now, now),
            "edited_at": None,
            "deleted": False,
        }

    async def receive(self, messages: list[Any], *, peer: str, node_name: str) -> dict[str, str]:
        """Apply a member's inbox delivery; returns "ok" or "rejected: why" per message ID.

        Messages are applied in order; consecutive comments are checked and stored
        together (one feed transaction), views are counted together at the end, and
        the rest of the node hears of the change once. Each message ID is the
        idempotency key: a redelivered message is accepted again without effect.
        """
        results: dict[str, str] = {}
        receipts: list[tuple[str, str, float]] = []
        pending: list[_NewComment] = []

        async def store_pending() -> None:
            stored = await self._add_many(pending, author_node=peer, author_node_name=node_name, viewer=peer)
            for c, row in zip(pending, stored, strict=True):
                results[c.comment_id] = f"rejected: {row.message}" if isinstance(row, PrivNetworkError) else "ok"
            pending.clear()

        async with self.batch():
            for message in messages:
                if not isinstance(message, dict) or not isinstance(message.get("id"), str):
                    raise InvalidInput("each message needs an id")
                mid, kind, data = message["id"][:64], message.get("kind"), message.get("payload")
                if kind == "comment" and isinstance(data, dict):
                    created_at = data.get("created_at")
                    parent = data.get("parent")
                    pending.append(
                        _NewComment(
                            comment_id=mid,
                            item_id=str(data.get("item")),
                            parent_id=parent if isinstance(parent, str) else None,
                            author=str(data.get("author", "")),
                            body=data.get("body"),
                            created_at=created_at if isinstance(created_at, float) else None,
                        )
                    )
                    continue
                if kind == "view" and isinstance(data, dict):
                    at = data.get("at")
                    if isinstance(data.get("item"), str) and isinstance(at, int | float) and not isinstance(at, bool):
                        receipts.append((mid, data["item"], float(at)))
                    else:
                        results[mid] = "rejected: a view names an item and a time"
                    continue
                if pending:  # an edit or a deletion may concern a comment just before it
                    await store_pending()
                try:
                    if not isinstance(data, dict):
                        raise InvalidInput("message payload must be an object")
                    if kind == "comment_edit":
                        await self.edit(
                            str(data.get("comment")), data.get("body"), author=str(data.get("author")), author_node=peer
                        )
                    elif kind == "comment_delete":
                        await self.delete(
                            str(data.get("comment")), author=str(data.get("author")), author_node=peer, owner=False
                        )
                    else:
                        raise InvalidInput(f"unknown message kind {str(kind)[:20]!r}")
                    results[mid] = "ok"
                except PrivNetworkError as exc:
                    results[mid] = f"rejected: {exc.message}"
            if pending:
                await store_pending()
            if receipts:
                await self.add_views(receipts, viewer=peer)
                for mid, _item, _at in receipts:
                    results[mid] = "ok"
        return results

    async def edit(self, comment_id: str, body: object, *, author: str, author_node: str) -> CommentInfo:
        row = await self._own(comment_id, author, author_node)
        if row["deleted"]:
            raise InvalidInput("a deleted comment cannot be edited")
        await self._store.update_comment(
            comment_id, {"body": clean_comment_body(body, self.max_length), "edited_at": time.time()}
        )
        await self._changed()
        return comment_from_row(await self._get(comment_id))

    async def delete(self, comment_id: str, *, author: str | None, author_node: str | None, owner: bool) -> None:
        """Delete a comment: its author may, and the item's owner may delete any on their items."""
        if owner:
            await self._get(comment_id)
        else:
            assert author is not None and author_node is not None
            await self._own(comment_id, author, author_node)
        await self._store.update_comment(comment_id, {"deleted": True, "body": "", "edited_at": time.time()})
        await self._changed()

    async def _get(self, comment_id: str) -> dict[str, Any]:
        row = await self._store.get_comment(comment_id) if COMMENT_ID_RE.match(comment_id) else None
        if row is None:
            raise NotFound(f"no comment {comment_id[:40]}")
        return row

    async def _own(self, comment_id: str, author: str, author_node: str) -> dict[str, Any]:
        row = await self._get(comment_id)
        if row["author_node"] != author_node or row["author"] != author:
            raise Forbidden("only its author can change a comment")
        return row

    async def add_views(self, receipts: list[tuple[str, str, float]], viewer: str | None) -> dict[str, int]:
        """Count views (each receipt once) on items the viewer may see; returns new totals."""
        audience = await self._store.visibilities([item_id for _r, item_id, _a in receipts])
        now = time.time()
        allowed = [
            (receipt_id, item_id, min(at, now))
            for receipt_id, item_id, at in receipts
            if item_id in audience and visible_to(audience[item_id], viewer)
        ]
        totals = await self._store.add_views(allowed)
        if totals:
            await self._changed()
        return totals

    async def view_totals(self, item_ids: list[str]) -> dict[str, int]:
        return await self._store.view_totals(item_ids)
