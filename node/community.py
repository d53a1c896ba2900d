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
from typing import Any

from node.service import ContentManager, comment_from_row, visible_to
from node.store import CmaStore
from priv_network.errors import Forbidden, InvalidInput, NotFound
from priv_network.wire import COMMENT_ID_RE, MAX_COMMENT_DEPTH, CommentInfo, clean_comment_body

log = logging.getLogger(__name__)

MAX_AUTHOR = 64


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
        if not COMMENT_ID_RE.match(comment_id):
            raise InvalidInput("bad comment id")
        existing = await self._store.get_comment(comment_id)
        if existing is not None:
            if existing["author_node"] != author_node:
                raise Forbidden("that comment ID belongs to another node")
            return comment_from_row(existing)
        item = await self._cma.get_item(item_id)
        if not visible_to(item.visibility, viewer):
            raise NotFound(f"no item {item_id}")
        depth = 0
        if parent_id is not None:
            parent = await self._store.get_comment(parent_id)
            if parent is None or parent["item_id"] != item_id:
                raise InvalidInput("a reply must answer a comment on the same item")
            depth = int(parent["depth"]) + 1
            if depth > MAX_COMMENT_DEPTH:
                raise InvalidInput(f"replies nest at most {MAX_COMMENT_DEPTH} deep; answer a comment higher up")
        author = " ".join(author.split())[:MAX_AUTHOR] or "someone"
        now = time.time()
        values = {
            "id": comment_id,
            "item_id": item_id,
            "parent_id": parent_id,
            "depth": depth,
            "author": author,
            "author_node": author_node,
            "author_node_name": author_node_name[:200],
            "body": clean_comment_body(body, self.max_length),
            "created_at": min(created_at or now, now),
            "edited_at": None,
            "deleted": False,
        }
        await self._store.insert_comment(values)
        await self._changed()
        return comment_from_row(values)

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
        allowed = []
        for receipt_id, item_id, at in receipts:
            try:
                item = await self._cma.get_item(item_id)
            except NotFound:
                continue
            if visible_to(item.visibility, viewer):
                allowed.append((receipt_id, item_id, min(at, time.time())))
        totals = await self._store.add_views(allowed)
        if totals:
            await self._changed()
        return totals

    async def view_totals(self, item_ids: list[str]) -> dict[str, int]:
        return await self._store.view_totals(item_ids)
