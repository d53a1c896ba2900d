"""The content manager: keeps the registry in step with every node's feed, and searches it.

One sync round polls this node's own feed and every member's, each from its
stored cursor. A page is applied whole or not at all; a failure never
deletes anything, it marks the peer offline and backs it off (exponential,
with jitter, stored in the database), and any valid signed request from
that peer resets the backoff at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from priv_network.errors import InvalidInput, PrivNetworkError
from priv_network.interfaces import CatalogSource, Peer, PeerDirectory, SearchFilters, SearchHit
from priv_network.observability import Metrics
from priv_network.peerclient import PeerClient
from priv_network.wire import MAX_PAGE, FeedPage, ItemInfo
from registry.search import Hit
from registry.store import RegistryStore

log = logging.getLogger(__name__)

MAX_SEARCH_LIMIT = 200
# Entries asked for per page once a source has said there is more (a catch-up):
# the most a node serves (wire.MAX_PAGE). A poll starts with [sync] page_size.
CATCH_UP_PAGE = MAX_PAGE


@dataclasses.dataclass
class _Position:
    """A source's cursor and feed ID as this registry last stored them, and whether it is on record as healthy
    (online, no failures, no error), in which case an idle poll need not write anything at once."""

    cursor: int
    feed_id: str | None
    healthy: bool


class RemoteCatalog:
    """A member's changes feed, fetched with a signed request."""

    def __init__(self, client: PeerClient, peer: Peer) -> None:
        self.client = client
        self.peer = peer
        self.node_id = peer.node_id

    async def fetch_changes(self, since: int, limit: int) -> FeedPage:
        data = await self.client.get(self.peer.url, f"/federation/v1/catalog?since={since}&limit={limit}")
        page = FeedPage.from_json(data, limit=limit)
        if page.node != self.peer.node_id:
            raise InvalidInput(f"{self.peer.url} answered with the feed of another node ({page.node})")
        if page.since != since:
            raise InvalidInput(f"{self.peer.url} answered from cursor {page.since}, not {since}")
        return page


class Registry:
    def __init__(
        self,
        *,
        store: RegistryStore,
        own: CatalogSource,
        directory: PeerDirectory,
        node_id: str,
        name: str,
        url: str,
        page_size: int,
        catch_up_page_size: int | None = None,
        max_concurrent: int = 8,
        backoff_min: float = 5.0,
        backoff_max: float = 3600.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._store = store
        self._own = own
        self._directory = directory
        self.node_id = node_id
        self._name = name
        self._url = url
        self._page_size = page_size
        # Once a source says there is more, ask for pages this large (default: the most a node serves).
        self._catch_up_page_size = max(page_size, min(catch_up_page_size or CATCH_UP_PAGE, MAX_PAGE))
        self._max_concurrent = max_concurrent
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._client: PeerClient | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._round = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._known: set[str] = set()
        self._after_round: list[Callable[[], Awaitable[None]]] = []
        # What this registry last made the sources table say, so that an idle
        # round reads and writes almost nothing (the table stays the durable copy):
        self._roster: frozenset[Peer] | None = None  # the members reconcile_sources last made the sources
        self._reconciling = asyncio.Lock()
        self._positions: dict[str, _Position] = {}  # cursor and feed id per source, after its last page
        self._synced: dict[str, float] = {}  # idle polls not yet recorded: node ID -> when
        self._in_round = 0

    def after_round(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` after every sync round (e.g. to follow pins to their owners' rules)."""
        self._after_round.append(hook)

    def set_client(self, client: PeerClient) -> None:
        self._client = client

    async def start(self) -> None:
        await self._store.ensure_source(self.node_id, self._name, self._url)
        self._known = {p.node_id for p in await self._directory.active_peers()}
        await self.on_local_change()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def on_local_change(self) -> None:
        """This node's feed changed (items, or the roster): follow it at once.

        Members that are new to this node are polled right away in the
        background, so a join is visible in search without waiting a round.
        """
        peers = await self._directory.active_peers()
        await self._reconcile(peers)
        await self.sync_source(self._own)
        await self._record_synced()
        new = [p for p in peers if p.node_id not in self._known]
        self._known = {p.node_id for p in peers}
        if new:
            self._poll_soon(new)

    def _poll_soon(self, peers: list[Peer]) -> None:
        if self._client is None or not peers:
            return

        async def poll_all() -> None:
            for peer in peers:
                await self.poll_peer(peer)

        task = asyncio.create_task(poll_all(), name="poll peers now")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def sync_self(self) -> int:
        changed = await self.sync_source(self._own)
        await self._record_synced()
        return changed

    # -- polling ------------------------------------------------------------
    def _backoff(self, failures: int) -> float:
        delay = min(self._backoff_max, self._backoff_min * 2 ** min(failures, 30))
        return delay * (0.5 + random.random() / 2)

    async def sync_all(self, *, force: bool = True) -> dict[str, Any]:
        """One round: this node, then every member (those backed off only if ``force``)."""
        async with self._round:
            self._in_round += 1
            try:
                results: dict[str, Any] = {self.node_id: await self.sync_source(self._own)}
                polled: set[str] = set()
                while True:
                    peers = await self._directory.active_peers()
                    await self._reconcile(peers)
                    waiting = [p for p in peers if p.node_id not in polled]
                    if waiting and not force:
                        retry_at = {s["node_id"]: s["next_retry_at"] for s in await self._store.list_sources()}
                        now = time.time()
                        waiting = [p for p in waiting if (retry_at.get(p.node_id) or 0) <= now]
                    if not waiting:
                        break

                    async def poll(peer: Peer, sem: asyncio.Semaphore) -> None:
                        async with sem:
                            results[peer.node_id] = await self.poll_peer(peer)

                    polled.update(p.node_id for p in waiting)
                    sem = asyncio.Semaphore(self._max_concurrent)
                    await asyncio.gather(*(poll(p, sem) for p in waiting))
                    # Members learned during this round are polled in the same round.
            finally:
                self._in_round -= 1
                try:
                    await self._record_synced()
                except Exception:  # only last-sync times, kept for the next attempt: not worth failing the round
                    log.exception("could not record the sources polled in this round")
            for hook in self._after_round:
                await hook()
            self._metrics.inc("priv_network_sync_rounds_total")
            return results

    async def _reconcile(self, peers: list[Peer]) -> None:
        """Make the sources table follow the roster, if the roster changed since it last did."""
        roster = frozenset(peers)
        async with self._reconciling:  # so that _roster is what the last committed reconcile made
            if roster == self._roster:
                return
            for node_id in await self._store.reconcile_sources(self.node_id, peers):
                self._positions.pop(node_id, None)
                self._synced.pop(node_id, None)
            self._roster = roster

    async def _record_synced(self) -> None:
        """Write down the idle polls kept in memory (one statement), unless a round is still running."""
        if self._in_round or not self._synced:
            return
        synced, self._synced = self._synced, {}
        try:
            await self._store.mark_synced(synced)
        except BaseException:
            for node_id, at in synced.items():
                self._synced.setdefault(node_id, at)
            raise

    async def _record_failure(self, node_id: str, error: str, next_retry_at: float) -> None:
        self._synced.pop(node_id, None)  # an earlier success must not overwrite this failure
        position = self._positions.get(node_id)
        if position is not None:
            position.healthy = False
        await self._store.record_failure(node_id, error, next_retry_at)

    async def poll_peer(self, peer: Peer) -> int | str:
        """Sync one peer; returns the number of changes, or the error that stopped it."""
        assert self._client is not None, "Registry.set_client() not called"
        started = time.time()
        try:
            changed = await self.sync_source(RemoteCatalog(self._client, peer), remote=True)
        except PrivNetworkError as exc:
            state = await self._store.get_source(peer.node_id)
            last_sync = max((state or {}).get("last_sync_at") or 0, self._synced.get(peer.node_id, 0))
            if state is not None and last_sync > started:
                # Another poll of this peer succeeded meanwhile: this failure is stale.
                log.info("sync with %s failed (%s) but a newer one succeeded", peer.node_id, exc.message)
                return f"error: {exc.message}"
            failures = int(state["failures"]) if state else 0
            delay = self._backoff(failures)
            await self._record_failure(peer.node_id, exc.message, time.time() + delay)
            self._metrics.inc("priv_network_sync_failures_total", peer=peer.node_id)
            log.warning("sync with %s (%s) failed: %s; retry in %.0fs", peer.name, peer.node_id, exc.message, delay)
            return f"error: {exc.message}"
        await self._record_synced()
        return changed

    async def peer_seen(self, node_id: str) -> bool:
        """A valid signed request arrived from ``node_id``: it is up, stop backing it off.

        Returns True if it had been failing (so work waiting for it can resume).
        """
        if await self._store.reset_backoff(node_id):
            position = self._positions.get(node_id)
            if position is not None:
                position.healthy = False  # its last error is still on record
            log.info("%s is back; backoff reset, polling it now", node_id)
            self._poll_soon([p for p in await self._directory.active_peers() if p.node_id == node_id])
            return True
        return False

    async def refresh_peer(self, node_id: str) -> None:
        """Poll one member now (e.g. after it accepted our comments, to show them published)."""
        for peer in await self._directory.active_peers():
            if peer.node_id == node_id:
                await self.poll_peer(peer)

    async def sync_source(self, source: CatalogSource, *, remote: bool = False) -> int:
        """Pull ``source``'s feed from its cursor; each page is applied whole or not at all.

        While a page is applied the next one is already being fetched (one
        page of read-ahead), so a catch-up costs about the slower of the two
        sides rather than their sum. A page is checked in full before it is
        applied; if fetching or checking one fails, the pages before it stay
        applied and the cursor stays after the last of them.
        """
        lock = self._locks.setdefault(source.node_id, asyncio.Lock())
        async with lock:
            position = await self._position(source.node_id)
            cursor, feed_id = position.cursor, position.feed_id
            changed = 0
            reset = False
            size = self._page_size
            page = await source.fetch_changes(cursor, size)
            while True:
                if feed_id is not None and page.feed_id != feed_id:
                    # The feed was rebuilt: start over from its beginning; the
                    # first page of the new feed replaces this node's rows.
                    log.info("feed of %s was rebuilt (new feed id); re-reading it", source.node_id)
                    feed_id, reset = page.feed_id, True
                    if cursor != 0:
                        cursor = 0
                        page = await source.fetch_changes(cursor, size)
                        continue
                if page.more:
                    size = self._catch_up_page_size
                ahead = asyncio.ensure_future(source.fetch_changes(page.next, size)) if page.more else None
                try:
                    if not page.entries and page.next == cursor and page.feed_id == feed_id and not reset:
                        # Nothing new. A source on record as healthy only needs its
                        # last sync time, written for the whole round in one go.
                        if position.healthy:
                            self._synced[source.node_id] = time.time()
                        else:
                            await self._store.mark_synced({source.node_id: time.time()})
                            self._synced.pop(source.node_id, None)
                            position.healthy = True
                    else:
                        if remote:
                            events = [e.event for e in page.entries if e.event is not None]
                            if events:
                                await self._directory.apply_roster_events(events, source.node_id)
                        changed += await self._store.apply_page(source.node_id, page, reset=reset)
                        self._synced.pop(source.node_id, None)
                        position = self._positions[source.node_id] = _Position(page.next, page.feed_id, True)
                except BaseException:
                    if ahead is not None:
                        ahead.cancel()
                        await asyncio.gather(ahead, return_exceptions=True)
                    raise
                reset = False
                cursor, feed_id = position.cursor, position.feed_id
                if ahead is None:
                    return changed
                page = await ahead

    async def _position(self, node_id: str) -> _Position:
        """Where this registry is in a source's feed (read from the database once)."""
        position = self._positions.get(node_id)
        if position is None:
            state = await self._store.get_source(node_id)
            if state is None:
                raise PrivNetworkError(f"unknown source {node_id}")
            healthy = bool(state["online"]) and not state["failures"] and state["last_error"] is None
            position = _Position(int(state["cursor"]), state["feed_id"], healthy)
            self._positions[node_id] = position
        return position

    async def penalize(self, node_id: str, reason: str) -> None:
        """A peer misbehaved in a transfer: log it and back it off like a failed poll."""
        state = await self._store.get_source(node_id)
        failures = int(state["failures"]) if state else 0
        delay = self._backoff(failures)
        log.warning("peer %s %s; backing it off for %.0fs", node_id, reason, delay)
        await self._record_failure(node_id, reason, time.time() + delay)

    # -- reading ------------------------------------------------------------
    def to_item(self, row: dict[str, Any]) -> ItemInfo:
        return ItemInfo(
            id=row["item_id"],
            node=row["node_id"],
            title=row["title"],
            kind=row["kind"],
            mime=row["mime"],
            size=int(row["size"]),
            content_hash=row["content_hash"],
            block_size=int(row["block_size"]),
            manifest_hash=row["manifest_hash"],
            has_poster=bool(row["has_poster"]),
            visibility=row["visibility"],
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            duration=row["duration"],
            width=row["width"],
            height=row["height"],
            source=row["source"],
            description=row["description"],
            year=row["year"],
            genres=tuple(g for g in (row["genres"] or "").split(",") if g),
            show=row["show"],
            season=row["season"],
            episode=row["episode"],
        )

    def _hit(self, hit: Hit) -> SearchHit:
        row = hit.row
        item = self.to_item(row)
        local = row["node_id"] == self.node_id
        return SearchHit(item=item, online=hit.online or local, node_name=hit.source_name, local=local)

    async def search(self, query: str, limit: int = 50, filters: SearchFilters | None = None) -> list[SearchHit]:
        limit = max(1, min(limit, MAX_SEARCH_LIMIT))
        if len(query) > 500:
            raise InvalidInput("query is longer than 500 characters")
        return await self._with_holders([self._hit(h) for h in await self._store.search(query, limit, filters)])

    async def search_ids(self, item_ids: list[str]) -> list[SearchHit]:
        hits = []
        for item_id in item_ids:
            hit = await self._store.entry_by_item(item_id)
            if hit is not None:
                hits.append(self._hit(hit))
        return await self._with_holders(hits)

    async def recent(self, limit: int = 50, filters: SearchFilters | None = None) -> list[SearchHit]:
        hits = [self._hit(h) for h in await self._store.recent(max(1, min(limit, MAX_SEARCH_LIMIT)), filters)]
        return await self._with_holders(hits)

    async def _with_holders(self, hits: list[SearchHit]) -> list[SearchHit]:
        """Name the members holding a verified copy of each hit (besides its owner)."""
        holders = await self._store.holders([h.item.content_hash for h in hits])
        views = await self._store.view_totals([(h.item.node, h.item.id) for h in hits])
        return [
            dataclasses.replace(
                h,
                holders=tuple(x for x in holders.get(h.item.content_hash, []) if x["node_id"] != h.item.node),
                views=views.get((h.item.node, h.item.id), 0),
            )
            for h in hits
        ]

    async def view_total(self, node_id: str, item_id: str) -> int:
        return (await self._store.view_totals([(node_id, item_id)])).get((node_id, item_id), 0)

    async def peers(self) -> list[dict[str, Any]]:
        """Every member with its sync state, for `peers` and the network page."""
        counts = await self._store.item_counts()
        sources = {s["node_id"]: s for s in await self._store.list_sources()}
        out = []
        for peer in await self._directory.active_peers():
            state = sources.get(peer.node_id, {})
            last_sync = self._synced.get(peer.node_id) or state.get("last_sync_at")
            out.append(
                {
                    "node_id": peer.node_id,
                    "name": peer.name,
                    "url": peer.url,
                    "online": bool(state.get("online", False)) and last_sync is not None,
                    "last_sync_at": last_sync,
                    "items": counts.get(peer.node_id, 0),
                    "failures": int(state.get("failures", 0) or 0),
                    "next_retry_at": state.get("next_retry_at"),
                    "last_error": state.get("last_error"),
                }
            )
        return out
