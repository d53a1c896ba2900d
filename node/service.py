"""The CMA's rules: ingest, items, the changes feed, and API tokens."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.blobs import BlobStore, StoredBlob, StreamHasher
from node.probe import ProbeResult, probe
from node.serving import download_name
from node.store import CmaStore
from priv_network import __version__
from priv_network.errors import Conflict, InvalidInput, NotFound, PrivNetworkError
from priv_network.identity import normalize_node_id
from priv_network.interfaces import (
    ChangeListener,
    ContentFile,
    IngestReport,
    NodeStatus,
    Principal,
)
from priv_network.wire import CommentInfo, FeedEntry, FeedPage, ItemInfo, RosterEvent, check_item_id

log = logging.getLogger(__name__)

VISIBILITY_HELP = "visibility must be private, network or peers:ID,ID"
MAX_TITLE = 500
SESSION_TTL = 30 * 86400
ROW_CACHE = 10_000
TOKEN_CACHE = 10_000
TOKEN_CACHE_SECONDS = 10.0


def comment_from_row(row: dict[str, Any], prefix: str = "") -> CommentInfo:
    deleted = bool(row[f"{prefix}deleted"])
    return CommentInfo(
        id=row[f"{prefix}id"],
        item=row[f"{prefix}item_id"],
        parent=row[f"{prefix}parent_id"],
        depth=int(row[f"{prefix}depth"]),
        author=row[f"{prefix}author"],
        author_node=row[f"{prefix}author_node"],
        author_node_name=row[f"{prefix}author_node_name"],
        body="" if deleted else row[f"{prefix}body"],
        created_at=float(row[f"{prefix}created_at"]),
        edited_at=row[f"{prefix}edited_at"],
        deleted=deleted,
    )


# Sources whose items follow a file path: when the file changes, its item takes the new content in place.
FOLLOWS_PATH = ("folder", "plex")

METADATA_FIELDS = ("description", "year", "genres", "show", "season", "episode", "source_url", "external_ids")


def split_genres(text: str | None) -> tuple[str, ...]:
    return tuple(g for g in (text or "").split(",") if g)


def _probed_values(
    result: ProbeResult, stored: StoredBlob, name: str, metadata: dict[str, Any] | None
) -> dict[str, Any]:
    """An item's columns from its probe and its source's metadata (a probed duration wins)."""
    values: dict[str, Any] = {
        "kind": result.kind,
        "mime": result.mime,
        "size": stored.size,
        "duration": result.duration,
        "width": result.width,
        "height": result.height,
        "video_codec": result.video_codec,
        "audio_codec": result.audio_codec,
        "container": result.container,
        "original_name": name,
        "warning": result.warning,
        **metadata_values(metadata or {}),
    }
    if result.duration is None and isinstance((metadata or {}).get("duration"), int | float):
        values["duration"] = float((metadata or {})["duration"])
    return values


def metadata_values(meta: dict[str, Any]) -> dict[str, Any]:
    """Item columns from source metadata (unknown keys ignored, types checked, lengths bounded)."""
    out: dict[str, Any] = {}
    for key in ("description", "show", "source_url"):
        if isinstance(meta.get(key), str) and meta[key].strip():
            out[key] = meta[key].strip()[: 10000 if key == "description" else 500]
    for key in ("year", "season", "episode"):
        value = meta.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10000:
            out[key] = value
    genres = meta.get("genres")
    if isinstance(genres, list | tuple):
        clean = [" ".join(str(g).replace(",", " ").split())[:60] for g in genres if str(g).strip()]
        out["genres"] = ",".join(dict.fromkeys(clean[:20]))
    ids = meta.get("external_ids")
    if isinstance(ids, dict):
        out["external_ids"] = json.dumps({str(k)[:40]: str(v)[:200] for k, v in list(ids.items())[:20]})
    return out


def visible_to(visibility: str, viewer: str | None) -> bool:
    """May ``viewer`` (a member's node ID; None for this node itself) see an item?"""
    if viewer is None:
        return True
    if visibility == "network":
        return True
    if visibility.startswith("peers:"):
        return viewer in visibility[len("peers:") :].split(",")
    return False


def new_item_id() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").lower().rstrip("=")


def check_visibility(value: str) -> str:
    if value in ("private", "network"):
        return value
    if value.startswith("peers:"):
        peers = [normalize_node_id(p) for p in value[len("peers:") :].split(",") if p.strip()]
        if peers:
            return "peers:" + ",".join(dict.fromkeys(peers))
    raise InvalidInput(f"{VISIBILITY_HELP}, not {value[:60]!r}")


def title_from_name(name: str) -> str:
    stem = Path(name).stem if Path(name).suffix else name
    return " ".join(stem.replace("_", " ").split()) or name


@dataclass(frozen=True)
class _Candidate:
    path: Path
    size: int
    mtime_ns: int


class ContentManager:
    """The CMA: the one object that reads and writes the content store."""

    def __init__(
        self,
        *,
        store: CmaStore,
        blobs: BlobStore,
        executor: Executor,
        node_id: str,
        node_name: str,
        node_url: str,
        hash_workers: int,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._executor = executor
        self.node_id = node_id
        self.node_name = node_name
        self.node_url = node_url
        self._hash_workers = hash_workers
        self._listeners: list[ChangeListener] = []
        self._feed_id: str | None = None
        self._rows: dict[str, dict[str, Any]] = {}
        self._generation = 0
        self._tokens: dict[str, tuple[Principal, float]] = {}
        # Bumped by every revocation: a lookup that read a token before it was revoked is not cached.
        self._token_generation = 0
        self._revoke_lock = asyncio.Lock()
        self._protected_paths: _Protected | None = None

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def notify_changed(self) -> None:
        # Every catalog change comes through here: forget cached item rows first.
        self._generation += 1
        self._rows.clear()
        for listener in self._listeners:
            await listener()

    async def _row(self, item_id: str) -> dict[str, Any]:
        """An item's row, from memory when nothing changed since it was read (the hot path of streaming)."""
        check_item_id(item_id)
        row = self._rows.get(item_id)
        if row is not None:
            return row
        generation = self._generation
        row = await self._store.get_item(item_id)
        if row is None:
            raise NotFound(f"no item {item_id}")
        if generation == self._generation:  # not read across a change: safe to keep
            if len(self._rows) >= ROW_CACHE:
                self._rows.clear()
            self._rows[item_id] = row
        return row

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- lifecycle ----------------------------------------------------------
    async def bootstrap(self) -> None:
        """First-run set-up inside a fresh database (called by init)."""
        if await self._store.get_meta("feed_id") is None:
            await self._store.set_meta("feed_id", secrets.token_hex(16))

    async def start(self, *, new_feed: bool = False) -> None:
        await self._run(self._blobs.prepare)
        if new_feed:
            # A restored (possibly older) database: readers must start over rather than skip changes.
            await self._store.set_meta("feed_id", secrets.token_hex(16))
            log.info("new feed ID after a restore; peers will re-read this node's feed")
        self._feed_id = await self._store.get_meta("feed_id")
        if self._feed_id is None:
            await self.bootstrap()
            self._feed_id = await self._store.get_meta("feed_id")

    @property
    def feed_id(self) -> str:
        assert self._feed_id is not None, "ContentManager.start() not called"
        return self._feed_id

    # -- items --------------------------------------------------------------
    def _info(self, row: dict[str, Any]) -> ItemInfo:
        return ItemInfo(
            id=row["id"],
            node=self.node_id,
            title=row["title"],
            kind=row["kind"],
            mime=row["mime"],
            size=int(row["size"]),
            content_hash=row["content_hash"],
            block_size=int(row["block_size"]),
            manifest_hash=row["manifest_hash"],
            has_poster=bool(row["poster"]),
            visibility=row["visibility"],
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            duration=row["duration"],
            width=row["width"],
            height=row["height"],
            video_codec=row["video_codec"],
            audio_codec=row["audio_codec"],
            container=row["container"],
            warning=row["warning"],
            source=row["source"],
            description=row["description"],
            year=row["year"],
            genres=split_genres(row["genres"]),
            show=row["show"],
            season=row["season"],
            episode=row["episode"],
            source_url=row["source_url"],
            external_ids=json.loads(row["external_ids"]) if row["external_ids"] else {},
        )

    async def get_item(self, item_id: str) -> ItemInfo:
        return self._info(await self._row(item_id))

    async def list_items(self, limit: int, offset: int = 0) -> list[ItemInfo]:
        return [self._info(r) for r in await self._store.list_items(limit, offset)]

    async def content_file(self, item_id: str) -> ContentFile:
        return self._content_file(await self._row(item_id))  # from the row: this runs for every range request

    async def download(self, item_id: str) -> tuple[ContentFile, str]:
        """The item's file, and the name to save it under (its title, with the extension it came with)."""
        row = await self._row(item_id)
        return self._content_file(row), download_name(row["title"], row["mime"], row["original_name"])

    def _content_file(self, row: dict[str, Any]) -> ContentFile:
        external = row["external_path"]
        path = Path(external) if external else self._blobs.blob_path(row["content_hash"])
        return ContentFile(path=path, mime=row["mime"], size=int(row["size"]), etag=row["content_hash"])

    async def poster_file(self, item_id: str) -> ContentFile:
        item = await self.get_item(item_id)
        if not item.has_poster:
            raise NotFound(f"item {item_id} has no poster")
        path = self._blobs.poster_path(item.content_hash)
        return ContentFile(path=path, mime="image/jpeg", size=-1, etag=f"poster-{item.content_hash}")

    async def set_title(self, item_id: str, title: str) -> ItemInfo:
        check_item_id(item_id)
        title = _check_title(title)
        if not await self._store.update_item(item_id, {"title": title}):
            raise NotFound(f"no item {item_id}")
        await self.notify_changed()
        return await self.get_item(item_id)

    async def set_metadata(self, item_id: str, meta: dict[str, Any], title: str | None = None) -> ItemInfo:
        """Update an item's source metadata (a re-import that found changes)."""
        check_item_id(item_id)
        row = await self._store.get_item(item_id)
        if row is None:
            raise NotFound(f"no item {item_id}")
        values = metadata_values(meta)
        if title is not None:
            values["title"] = _check_title(title)
        changed = {k: v for k, v in values.items() if row.get(k) != v}
        if changed:
            await self._store.update_item(item_id, changed)
            await self.notify_changed()
        return await self.get_item(item_id)

    async def check_audience(self, visibility: str) -> str:
        """``check_visibility``, and a peers list must name members of the group.

        Asked where a person sets a visibility (add, visibility, download,
        import); a watched folder's configured default is not refused when a
        member it names leaves, which would stop every rescan.
        """
        visibility = check_visibility(visibility)
        if visibility.startswith("peers:"):
            rows = {m["node_id"]: m for m in await self._store.list_members()}
            for peer in visibility[len("peers:") :].split(","):
                if peer == self.node_id:
                    continue
                member = rows.get(peer)
                if member is None:
                    raise InvalidInput(f"{peer} is not a member of this group (`priv-network peers` lists them)")
                if not member["active"]:
                    raise InvalidInput(f"{peer} ({member['name']}) was removed from the group")
        return visibility

    async def set_visibility(self, item_id: str, visibility: str) -> ItemInfo:
        check_item_id(item_id)
        if not await self._change_visibility(item_id, check_visibility(visibility)):
            raise NotFound(f"no item {item_id}")
        await self.notify_changed()
        return await self.get_item(item_id)

    async def _change_visibility(self, item_id: str, visibility: str) -> bool:
        """Record a new visibility in the feed (False: no such item); the caller tells the listeners."""
        if not await self._store.update_item(item_id, {"visibility": visibility}):
            return False
        # Comments and views follow the item to its new audience (and leave the old one).
        await self._store.republish_item_extras(item_id)
        return True

    async def apply_visibility(self, report: IngestReport, visibility: str) -> list[tuple[str, str, str]]:
        """Give the items an add found already stored the visibility the add asked for explicitly.

        Changes the items as `priv-network visibility` does (recorded in the feed, comments and views
        follow), updates ``report.existing`` in place and returns (item ID, old, new) per item changed.
        """
        visibility = check_visibility(visibility)
        changed: dict[str, tuple[str, str, str]] = {}
        for item in report.existing:
            if item.id in changed or item.visibility == visibility:
                continue
            if await self._change_visibility(item.id, visibility):
                changed[item.id] = (item.id, item.visibility, visibility)
        if changed:
            await self.notify_changed()
            report.existing[:] = [await self.get_item(i.id) if i.id in changed else i for i in report.existing]
        return list(changed.values())

    async def remove_item(self, item_id: str) -> None:
        check_item_id(item_id)
        orphan = await self._store.get_item(item_id)
        if orphan is None:
            raise NotFound(f"no item {item_id}")
        unreferenced = await self._store.delete_item(item_id)
        if unreferenced is not None and await self._store.get_pin(unreferenced) is None:
            await self._run(self._blobs.delete, unreferenced)
        await self.notify_changed()

    async def status(self) -> NodeStatus:
        count, size = await self._store.stats()
        free = await self._run(self._blobs.free_bytes)
        return NodeStatus(
            node_id=self.node_id,
            name=self.node_name,
            url=self.node_url,
            version=__version__,
            items=count,
            store_bytes=size,
            free_bytes=free,
            feed_id=self.feed_id,
            feed_seq=await self._store.last_seq(),
        )

    # -- the changes feed ---------------------------------------------------
    async def changes(self, since: int, limit: int, viewer: str | None = None) -> FeedPage:
        """The feed after ``since`` as ``viewer`` (a peer's node ID; None: this node) may see it.

        An item the viewer may not see is published to it as a deletion, so a
        change of access rules reaches a peer that had the item as a removal.
        """
        if since < 0:
            raise InvalidInput("since must be >= 0")
        limit = max(1, min(limit, 5000))
        rows = await self._store.changes_since(since, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        entries = []
        extra_items = [
            (row["comment_item_id"] if entity == "comment" else entity_id)
            for _s, entity, _o, entity_id, row in rows
            if row is not None and entity in ("comment", "views")
        ]
        audience = await self._store.visibilities(extra_items)
        for seq, entity, _op, entity_id, row in rows:
            if entity in ("comment", "views"):
                item_id = row["comment_item_id"] if row is not None and entity == "comment" else entity_id
                shown = row is not None and visible_to(audience.get(item_id, "private"), viewer)
                if not shown or row is None:
                    entries.append(FeedEntry(seq=seq, entity=entity, op="delete", id=entity_id))
                elif entity == "comment":
                    comment = comment_from_row(row, prefix="comment_")
                    entries.append(FeedEntry(seq=seq, entity=entity, op="upsert", id=entity_id, comment=comment))
                else:
                    total = int(row["views_total"])
                    entries.append(FeedEntry(seq=seq, entity=entity, op="upsert", id=entity_id, total=total))
                continue
            if entity == "roster":
                if row is None:
                    continue
                event = RosterEvent(**json.loads(row["event_body"]), sig=row["event_sig"])
                entries.append(FeedEntry(seq=seq, entity=entity, op="upsert", id=entity_id, event=event))
                continue
            if entity == "copy":
                holds = row is not None and row["copy_state"] == "complete"
                if holds and row is not None and not visible_to(row["copy_visibility"], viewer):
                    holds = False
                entries.append(FeedEntry(seq=seq, entity=entity, op="upsert" if holds else "delete", id=entity_id))
                continue
            item = self._info(row) if row is not None else None
            if item is not None and not visible_to(item.visibility, viewer):
                item = None
            entries.append(
                FeedEntry(seq=seq, entity=entity, op="upsert" if item else "delete", id=entity_id, item=item)
            )
        next_cursor = rows[-1][0] if rows else since
        return FeedPage(
            node=self.node_id, feed_id=self.feed_id, since=since, next=next_cursor, more=more, entries=entries
        )

    async def manifest_for(self, item_id: str, viewer: str) -> tuple[ItemInfo, bytes]:
        """The block manifest of an item the viewer may see."""
        item = await self.get_item(item_id)
        if not visible_to(item.visibility, viewer):
            raise NotFound(f"no item {item_id}")
        manifest = await self._store.get_manifest(item.content_hash)
        if manifest is None:
            raise NotFound(f"no item {item_id}")
        return item, manifest

    async def poster_file_for(self, item_id: str, viewer: str) -> ContentFile:
        item = await self.get_item(item_id)
        if not visible_to(item.visibility, viewer):
            raise NotFound(f"no item {item_id}")
        return await self.poster_file(item_id)

    async def content_file_for(self, item_id: str, viewer: str) -> ContentFile:
        """Content for a peer: an item it may not see does not exist for it (404, as unknown)."""
        item = await self.get_item(item_id)
        if not visible_to(item.visibility, viewer):
            raise NotFound(f"no item {item_id}")
        return await self.content_file(item_id)

    # -- ingest -------------------------------------------------------------
    def _protected(self) -> _Protected:
        """What ingest never takes (blocking the first time: it resolves symlinks)."""
        if self._protected_paths is None:
            url = self._store.engine.url
            database = (
                url.database
                if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
                else None
            )
            self._protected_paths = _Protected.of(self._blobs.root, database)
        return self._protected_paths

    async def ingest_paths(
        self, paths: Sequence[str], title: str | None, visibility: str, *, source: str = "local"
    ) -> IngestReport:
        """Ingest files and folders, the one way in for outside paths (the API's add, watched folders).

        Nothing inside the content store or a node's data folder is ever taken (see ``_collect``).
        """
        visibility = check_visibility(visibility)
        if title is not None:
            title = _check_title(title)
        if not paths:
            raise InvalidInput("nothing to add: give at least one file or folder")
        protected = await self._run(self._protected)
        candidates, failed, warnings = await self._run(_collect, [str(p) for p in paths], protected)
        if title is not None and len(candidates) != 1:
            raise InvalidInput(f"a title names one item, but {len(candidates)} files were given")
        report = IngestReport(failed=failed, warnings=warnings)
        known = await self._store.source_files_for([str(c.path) for c in candidates])
        existing_items = await self._store.items_by_hashes(v[2] for v in known.values())
        todo: list[_Candidate] = []
        for cand in candidates:
            seen = known.get(str(cand.path))
            if seen and seen[0] == cand.size and seen[1] == cand.mtime_ns and seen[2] in existing_items:
                if title is not None:
                    todo.append(cand)
                    continue
                report.existing.append(self._info(existing_items[seen[2]]))
                report.skipped_unchanged += 1
            else:
                todo.append(cand)
        sem = asyncio.Semaphore(self._hash_workers)
        disk_full: list[PrivNetworkError] = []

        async def one(cand: _Candidate) -> None:
            async with sem:
                try:
                    await self._ingest_one(cand, title, visibility, report, source, seen=str(cand.path) in known)
                except PrivNetworkError as exc:
                    report.failed.append((str(cand.path), exc.message))
                    if exc.status == 507:
                        disk_full.append(exc)

        await asyncio.gather(*(one(c) for c in todo))
        if report.added or report.updated or title is not None:
            await self.notify_changed()
        if disk_full and not report.added and not report.existing:
            raise disk_full[0]
        return report

    async def _ingest_one(
        self,
        cand: _Candidate,
        title: str | None,
        visibility: str,
        report: IngestReport,
        source: str,
        *,
        seen: bool = False,
    ) -> None:
        """Ingest one file; ``seen``: its path was ingested before (so it may have changed in place)."""
        stored: StoredBlob = await self._run(self._blobs.ingest, cand.path)
        if seen:
            updated = await self.replace_changed(
                stored, source_file=(str(cand.path), cand.size, cand.mtime_ns), source=source, report=report
            )
            if updated is not None:
                report.updated.append(updated)
                return
        await self.register(
            stored,
            name=cand.path.name,
            title=title,
            visibility=visibility,
            source=source,
            source_file=(str(cand.path), cand.size, cand.mtime_ns),
            report=report,
            where=str(cand.path),
        )

    async def ingest_file(
        self,
        path: Path,
        *,
        title: str | None,
        visibility: str,
        source: str,
        metadata: dict[str, Any],
        reference: bool,
    ) -> tuple[ItemInfo, str]:
        """Ingest one outside file with its metadata (an import); unchanged files are not read again.

        Returns the item and what happened: "added", "updated" (metadata changed), or "unchanged".
        """
        visibility = check_visibility(visibility)
        try:
            st = await self._run(os.stat, path)
        except OSError as exc:
            raise InvalidInput(f"{path}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode) or not os.access(path, os.R_OK):
            raise InvalidInput(f"{path}: not a readable file")
        protected = await self._run(self._protected)
        refused = await self._run(protected.refuses, path)
        if refused is not None:
            raise InvalidInput(f"{path}: not added: {refused}, which is never added")
        known = (await self._store.source_files_for([str(path)])).get(str(path))
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            existing = (await self._store.items_by_hashes([known[2]])).get(known[2])
            if existing is not None:
                before = self._info(existing)
                after = await self.set_metadata(before.id, metadata, title=title)
                return after, "unchanged" if after == before else "updated"
        stored: StoredBlob = await self._run(self._blobs.hash_in_place if reference else self._blobs.ingest, path)
        report = IngestReport()
        changed = await self.replace_changed(
            stored,
            source_file=(str(path), st.st_size, st.st_mtime_ns),
            source=source,
            report=report,
            metadata=metadata,
            external_path=str(path) if reference and not stored.already_stored else None,
        )
        if changed is not None:
            changed = await self.set_metadata(changed.id, metadata, title=title)
            await self.notify_changed()
            return changed, "updated"
        await self.register(
            stored,
            name=path.name,
            title=None,
            visibility=visibility,
            source=source,
            source_file=(str(path), st.st_size, st.st_mtime_ns),
            report=report,
            where=str(path),
            metadata=metadata,
            external_path=str(path) if reference and not stored.already_stored else None,
        )
        if report.added:
            item = await self.set_metadata(report.added[0].id, {}, title=title) if title else report.added[0]
            await self.notify_changed()
            return item, "added"
        before = report.existing[0]
        after = await self.set_metadata(before.id, metadata, title=title)
        return after, "unchanged" if after == before else "updated"

    async def replace_changed(
        self,
        stored: StoredBlob,
        *,
        source_file: tuple[str, int, int],
        source: str,
        report: IngestReport,
        metadata: dict[str, Any] | None = None,
        external_path: str | None = None,
    ) -> ItemInfo | None:
        """A watched or imported file whose content changed: its item takes the new content in place.

        The item keeps its ID, and with it its comments, views, share links and title; the feed
        publishes it again with the new content hash and manifest, and the old blob is released
        (its files go unless a pin still holds them). If the new content is already another item
        (one content is one item), the path leads to that item from now on and the old item is
        deleted. Returns None, having changed nothing, when this is not such a file: the path is
        new or its content is the same, the item came from another source, or another file still
        has the old content; the caller then records the content as usual. The caller tells the
        listeners.
        """
        path, _, _ = source_file
        if source not in FOLLOWS_PATH:
            return None
        known = (await self._store.source_files_for([path])).get(path)
        if known is None or known[2] == stored.content_hash:
            return None
        old_hash = known[2]
        holders = await self._store.items_by_hashes([old_hash, stored.content_hash])
        old = holders.get(old_hash)
        if old is None or old["source"] != source:
            return None
        if await self._store.source_files_for_hash(old_hash) != [path]:
            return None
        if stored.content_hash in holders:
            await self._store.add_item(_blob_values(stored, poster=False), {}, source_file)
            released = await self._store.delete_item(old["id"])
            if released is not None and await self._store.get_pin(released) is None:
                await self._run(self._blobs.delete, released)
            log.info(
                "%s changed to the content of item %s; item %s deleted",
                path,
                holders[stored.content_hash]["id"],
                old["id"],
            )
            return self._info(holders[stored.content_hash])
        name = Path(path).name
        result = await self._probe_stored(stored, name, path, report, external_path)
        values = _probed_values(result, stored, name, metadata)
        blob = _blob_values(stored, poster=bool(result.poster), external_path=external_path)
        if not await self._store.replace_item_content(old["id"], old_hash, blob, values, source_file):
            return None  # changed meanwhile: recorded as new content instead
        if await self._store.get_pin(old_hash) is None:
            await self._run(self._blobs.delete, old_hash)
        row = await self._store.get_item(old["id"])
        assert row is not None
        log.info(
            "%s changed: item %s now holds its new content (%s, %d bytes)", path, old["id"], result.kind, stored.size
        )
        return self._info(row)

    async def forget_missing_files(self, folder: str, *, source: str) -> list[str]:
        """Files under ``folder`` that were ingested but are gone: remove their items (a watched folder)."""
        removed = []
        for path, content_hash in await self._store.source_files_under(folder):
            if await self._run(os.path.exists, path):
                continue
            await self._store.forget_source_file(path)
            row = (await self._store.items_by_hashes([content_hash])).get(content_hash)
            if row is None or row["source"] != source or await self._store.source_files_for_hash(content_hash):
                continue
            await self.remove_item(row["id"])
            removed.append(row["id"])
        return removed

    async def ingest_stored_file(
        self,
        path: Path,
        *,
        name: str,
        title: str | None,
        visibility: str,
        source: str,
        metadata: dict[str, Any] | None = None,
        hashed: StreamHasher | None = None,
    ) -> tuple[ItemInfo, bool]:
        """Adopt a file already inside the store's folder (a finished upload or download): no copy.

        ``hashed``: the file's bytes were hashed as they were written (an upload), so
        they are not read again. Returns the item and whether it is new (False: the
        same content was already here).
        """
        visibility = check_visibility(visibility)
        if title is not None:
            title = _check_title(title)
        if hashed is not None:
            stored: StoredBlob = await self._run(self._blobs.adopt_hashed, path, hashed)
        else:
            stored = await self._run(self._blobs.adopt, path)
        report = IngestReport()
        await self.register(
            stored,
            name=name,
            title=title,
            visibility=visibility,
            source=source,
            source_file=None,
            report=report,
            where=name,
            metadata=metadata,
        )
        if report.added:
            await self.notify_changed()
            return report.added[0], True
        return report.existing[0], False

    async def register(
        self,
        stored: StoredBlob,
        *,
        name: str,
        title: str | None,
        visibility: str,
        source: str,
        source_file: tuple[str, int, int] | None,
        report: IngestReport,
        where: str,
        metadata: dict[str, Any] | None = None,
        external_path: str | None = None,
    ) -> None:
        """Record stored content as an item (probing it), or note the item that already has it."""
        known = await self._store.items_by_hashes([stored.content_hash])
        # `add --title` on content already here renames it; other sources just report the duplicate.
        retitle = title is not None and source == "local"
        if stored.content_hash in known and not retitle:
            await self._store.add_item(_blob_values(stored, poster=False), {}, source_file)
            report.existing.append(self._info(known[stored.content_hash]))
            return
        if stored.content_hash in known and title is not None:
            report.existing.append(await self.set_title(known[stored.content_hash]["id"], title))
            return
        result = await self._probe_stored(stored, name, where, report, external_path)
        item = {
            "id": new_item_id(),
            "content_hash": stored.content_hash,
            "title": title or title_from_name(name),
            "visibility": visibility,
            "source": source,
            **_probed_values(result, stored, name, metadata),
        }
        row, created = await self._store.add_item(
            _blob_values(stored, poster=bool(result.poster), external_path=external_path), item, source_file
        )
        (report.added if created else report.existing).append(self._info(row))
        log.info("ingested %s as %s (%s, %d bytes)", where, row["id"], result.kind, stored.size)

    async def _probe_stored(
        self, stored: StoredBlob, name: str, where: str, report: IngestReport, external_path: str | None
    ) -> ProbeResult:
        """Probe stored content (in a worker thread), keep its poster, note a probe warning in ``report``."""
        blob_path = Path(external_path) if external_path else self._blobs.blob_path(stored.content_hash)
        result: ProbeResult = await self._run(probe, blob_path, name)
        if result.poster:
            await self._run(self._blobs.write_poster, stored.content_hash, result.poster)
        if result.warning:
            report.warnings.append((where, result.warning))
            log.warning("ingest %s: %s", where, result.warning)
        return result

    # -- API tokens ---------------------------------------------------------
    async def create_token(self, name: str, *, admin: bool, kind: str = "api", ttl: float | None = None) -> str:
        return (await self.create_token_with_id(name, admin=admin, kind=kind, ttl=ttl))[1]

    async def create_token_with_id(
        self, name: str, *, admin: bool, kind: str = "api", ttl: float | None = None
    ) -> tuple[str, str]:
        """A new token for principal ``name``: (its ID, which lists and revokes it; the secret)."""
        token = "pn_" + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(8)
        now = time.time()
        await self._store.insert_token(
            {
                "id": token_id,
                "token_hash": _token_hash(token),
                "name": name,
                "kind": kind,
                "admin": admin,
                "created_at": now,
                "expires_at": now + ttl if ttl else None,
            }
        )
        return token_id, token

    async def authenticate(self, token: str) -> Principal | None:
        """The token's principal; a verified token is remembered for a few seconds (every request asks)."""
        if not token.startswith("pn_") or len(token) > 100:
            return None
        key = _token_hash(token)
        now = time.time()
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        generation = self._token_generation
        row = await self._store.token_by_hash(key)
        if row is None:
            return None
        if row["expires_at"] is not None and row["expires_at"] < now:
            return None
        if row["last_used_at"] is None or now - row["last_used_at"] > 60:
            await self._store.touch_token(row["id"], now)
        principal = Principal(name=row["name"], admin=bool(row["admin"]), token_id=row["id"])
        if generation != self._token_generation:  # revoked meanwhile, perhaps: ask again next time
            return principal
        if len(self._tokens) >= TOKEN_CACHE:
            self._tokens.clear()
        self._tokens[key] = (principal, min(now + TOKEN_CACHE_SECONDS, row["expires_at"] or now + 3600))
        return principal

    async def list_tokens(self) -> list[dict[str, Any]]:
        """Every token that still works: the CLI's own (kind "admin"), API tokens ("api") and web
        logins ("session"); never the secret nor its hash."""
        return [
            {
                "id": r["id"],
                "user": r["name"],
                "kind": r["kind"],
                "admin": bool(r["admin"]),
                "created_at": r["created_at"],
                "last_used_at": r["last_used_at"],
                "expires_at": r["expires_at"],
            }
            for r in await self._store.list_tokens(time.time())
        ]

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Delete a token: every request that sends it is refused from now on.

        The last working owner API token is kept (the CLI would be locked out with no way
        back): create another first.
        """
        row: dict[str, Any] | None = None
        deleted = False
        async with self._revoke_lock:
            if len(token_id) <= 32:  # the column's width: a longer one is no token's ID
                row, deleted = await self._store.revoke_token(token_id, time.time())
            if deleted:
                self._token_generation += 1
                for key, (principal, _) in list(self._tokens.items()):
                    if principal.token_id == token_id:
                        del self._tokens[key]
        if row is None:
            raise NotFound(f"no token {token_id[:40]!r}; `priv-network token list` shows the IDs of the tokens")
        if not deleted:
            raise Conflict(
                f"token {token_id} is this node's last owner (admin) API token: revoking it would lock the CLI out "
                "for good; create another first (`priv-network token create --admin`; put it in the data folder's "
                f"admin.token if {token_id} is the CLI's own), then revoke {token_id}"
            )
        log.info("revoked %s token %s of %s", row["kind"], token_id, row["name"])
        return {"id": token_id, "user": row["name"], "kind": row["kind"], "admin": bool(row["admin"])}

    async def create_session(self, principal: Principal) -> str:
        return await self.create_token(principal.name, admin=principal.admin, kind="session", ttl=SESSION_TTL)

    async def end_session(self, token: str) -> None:
        await self._store.delete_token_by_hash(_token_hash(token))
        self._token_generation += 1
        self._tokens.pop(_token_hash(token), None)


def _check_title(title: str) -> str:
    title = " ".join(title.split())
    if not title:
        raise InvalidInput("title must not be empty")
    if len(title) > MAX_TITLE:
        raise InvalidInput(f"title is longer than {MAX_TITLE} characters")
    return title


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _blob_values(stored: StoredBlob, *, poster: bool, external_path: str | None = None) -> dict[str, Any]:
    return {
        "external_path": external_path,
        "hash": stored.content_hash,
        "size": stored.size,
        "block_size": stored.block_size,
        "manifest": stored.manifest,
        "manifest_hash": stored.manifest_hash,
        "poster": poster,
    }


# A node's data folder always holds its key: a folder holding one is never ingested (this node's,
# or another node's on the same machine), so the key, the admin token, config.toml and the database
# beside it can never become items.
NODE_KEY_FILE = "node.key"
# What a folder walk passes over besides hidden entries: files operating systems and
# NAS boxes leave in media folders, and downloads still being written.
SKIPPED_FOLDERS = frozenset({"@eaDir", "#recycle", "$RECYCLE.BIN", "System Volume Information", "lost+found"})
SKIPPED_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r"})
SKIPPED_SUFFIXES = (".part", ".crdownload", ".partial", ".tmp", ".!qb", ".ytdl")


def _skipped_in_walk(name: str) -> bool:
    lowered = name.lower()
    return lowered in SKIPPED_FILES or lowered.endswith(SKIPPED_SUFFIXES)


_DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class _Protected:
    """What ingest never takes, as resolved paths: the content store, the database files, data folders."""

    store: str
    files: frozenset[str]
    names: frozenset[str]  # the files' base names: a folder walk looks further only for these

    @classmethod
    def of(cls, store_root: Path, database: str | None) -> _Protected:
        """Blocking (resolves symlinks). ``database``: the SQLite file, if the database is one."""
        files = frozenset(os.path.realpath(database + s) for s in _DATABASE_SUFFIXES) if database else frozenset()
        return cls(store=os.path.realpath(store_root), files=files, names=frozenset(map(os.path.basename, files)))

    def refuses(self, path: str | Path) -> str | None:
        """Why ``path`` must not be ingested, symlinks resolved (blocking); None if it may be."""
        return self.reason(os.path.realpath(path))

    def reason(self, real: str) -> str | None:
        """Why the resolved path ``real`` (a file or a folder) must not be ingested; None if it may be."""
        if _inside(real, self.store):
            return "it is in this node's content store"
        if real in self.files:
            return "it is this node's database"
        folder = real if os.path.isdir(real) else os.path.dirname(real)
        while True:
            if os.path.isfile(os.path.join(folder, NODE_KEY_FILE)):
                return "it is in a node's data folder (its key, admin token, config and database)"
            parent = os.path.dirname(folder)
            if parent == folder:
                return None
            folder = parent


def _collect(
    paths: list[str], protected: _Protected
) -> tuple[list[_Candidate], list[tuple[str, str]], list[tuple[str, str]]]:
    """Walk files and folders (blocking): (candidates, failed, warnings). Unreadable entries are reported, not fatal.

    Nothing inside the content store or a node's data folder is taken, symlinks resolved: a path
    named explicitly fails with the reason; a folder walk skips such a subtree (or a symlink
    pointing into one) with one warning.
    """
    found: dict[str, _Candidate] = {}
    failed: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []

    def consider(path: Path, st: os.stat_result) -> None:
        if not os.access(path, os.R_OK):
            failed.append((str(path), "permission denied"))
            return
        found.setdefault(str(path), _Candidate(path, st.st_size, st.st_mtime_ns))

    for raw in paths:
        path = Path(raw).expanduser().absolute()
        try:
            st = path.stat()
        except OSError as exc:
            failed.append((raw, exc.strerror or "cannot read"))
            continue
        real_root = os.path.realpath(path)
        refused = protected.reason(real_root)
        if refused is not None:
            failed.append((raw, f"not added: {refused}, which is never added"))
            continue
        if stat.S_ISREG(st.st_mode):
            consider(path, st)
            continue
        if not stat.S_ISDIR(st.st_mode):
            failed.append((raw, "not a regular file or folder"))
            continue

        def onerror(exc: OSError, top: str = raw) -> None:
            failed.append((exc.filename or top, exc.strerror or "cannot read"))

        for dirpath, dirnames, filenames in os.walk(path, onerror=onerror):
            # The walk does not follow symlinked folders, so below the root, paths are real.
            real_dir = os.path.normpath(os.path.join(real_root, os.path.relpath(dirpath, path)))
            if NODE_KEY_FILE in filenames or _inside(real_dir, protected.store):
                what = "the content store" if _inside(real_dir, protected.store) else "a node's data folder"
                warnings.append((dirpath, f"skipped: {what} is never added"))
                dirnames[:] = []
                continue
            dirnames.sort()
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIPPED_FOLDERS]
            for name in sorted(filenames):
                if name.startswith(".") or _skipped_in_walk(name):
                    continue
                file_path = Path(dirpath) / name
                try:
                    fst = os.lstat(file_path)
                    if stat.S_ISLNK(fst.st_mode):
                        target = os.path.realpath(file_path)
                        refused = protected.reason(target)
                        if refused is not None:
                            warnings.append((str(file_path), f"skipped: it links to {target}; {refused}"))
                            continue
                        fst = file_path.stat()
                    elif name in protected.names and os.path.join(real_dir, name) in protected.files:
                        warnings.append((str(file_path), "skipped: it is this node's database"))
                        continue
                except OSError as exc:
                    failed.append((str(file_path), exc.strerror or "cannot read"))
                    continue
                if stat.S_ISREG(fst.st_mode):
                    consider(file_path, fst)
    return list(found.values()), failed, warnings
