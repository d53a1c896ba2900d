"""The content manager: keeps the registry in step with every node's feed, and searches it."""

from __future__ import annotations

import asyncio
import logging

from priv_network.errors import InvalidInput, PrivNetworkError
from priv_network.interfaces import CatalogSource, SearchFilters, SearchHit
from priv_network.wire import ItemInfo
from registry.search import Hit
from registry.store import RegistryStore

log = logging.getLogger(__name__)

MAX_SEARCH_LIMIT = 200


class Registry:
    def __init__(
        self, *, store: RegistryStore, own: CatalogSource, node_id: str, name: str, url: str, page_size: int
    ) -> None:
        self._store = store
        self._own = own
        self.node_id = node_id
        self._name = name
        self._url = url
        self._page_size = page_size
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        await self._store.ensure_source(self.node_id, self._name, self._url)
        await self.sync_self()

    async def sync_self(self) -> None:
        await self.sync_source(self._own)

    async def sync_all(self) -> dict[str, int]:
        return {self.node_id: await self.sync_source(self._own)}

    async def sync_source(self, source: CatalogSource) -> int:
        """Pull ``source``'s feed from its cursor; each page is applied whole or not at all."""
        lock = self._locks.setdefault(source.node_id, asyncio.Lock())
        async with lock:
            state = await self._store.get_source(source.node_id)
            if state is None:
                raise PrivNetworkError(f"unknown source {source.node_id}")
            cursor = int(state["cursor"])
            feed_id = state["feed_id"]
            changed = 0
            reset = False
            while True:
                try:
                    page = await source.fetch_changes(cursor, self._page_size)
                except InvalidInput as exc:
                    log.warning("feed of %s rejected: %s", source.node_id, exc.message)
                    await self._store.record_failure(source.node_id, exc.message, None)
                    raise
                if feed_id is not None and page.feed_id != feed_id:
                    # The feed was rebuilt: start over from its beginning; the
                    # first page of the new feed replaces this node's rows.
                    log.info("feed of %s was rebuilt (new feed id); re-reading it", source.node_id)
                    feed_id, reset = page.feed_id, True
                    if cursor != 0:
                        cursor = 0
                        continue
                changed += await self._store.apply_page(source.node_id, page, reset=reset)
                reset = False
                feed_id = page.feed_id
                cursor = page.next
                if not page.more:
                    return changed

    def _hit(self, hit: Hit) -> SearchHit:
        row = hit.row
        item = ItemInfo(
            id=row["item_id"],
            node=row["node_id"],
            title=row["title"],
            kind=row["kind"],
            mime=row["mime"],
            size=int(row["size"]),
            content_hash=row["content_hash"],
            block_size=0,
            manifest_hash="",
            has_poster=bool(row["has_poster"]),
            visibility=row["visibility"],
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            duration=row["duration"],
            width=row["width"],
            height=row["height"],
        )
        local = row["node_id"] == self.node_id
        return SearchHit(item=item, online=hit.online or local, node_name=hit.source_name, local=local)

    async def search(self, query: str, limit: int = 50, filters: SearchFilters | None = None) -> list[SearchHit]:
        limit = max(1, min(limit, MAX_SEARCH_LIMIT))
        if len(query) > 500:
            raise InvalidInput("query is longer than 500 characters")
        return [self._hit(h) for h in await self._store.search(query, limit, filters)]

    async def recent(self, limit: int = 50, filters: SearchFilters | None = None) -> list[SearchHit]:
        return [self._hit(h) for h in await self._store.recent(max(1, min(limit, MAX_SEARCH_LIMIT)), filters)]
