"""Pinned copies of peers' items, as the CMA keeps them.

The manager fetches blocks; this class is the only writer of the copy and
its only judge. Each block is checked against the owner's manifest before a
byte of it is written (one hash per block: the manager does not hash
again), the partial copy is kept in ``pins/`` (so a pin resumes from its
verified blocks after a cut or a restart), the whole file is checked
against its content hash before the copy is usable, and pinned copies stay
within the storage budget by evicting the least recently watched.

While a pin is fetched, its manifest and open partial file are kept in
memory (``_Fetch``: no database read per block), and its progress is
written to the database about once a second or every ``PROGRESS_BYTES``:
the recorded figure is only what ``pins`` shows for a paused pin, since a
resume checks the partial copy on disk block by block anyway. At the same
moments what was written is handed to the disk in the background, so the
final fsync is short. Complete pins are also kept in memory, so that
playing a peer's item (which asks for a local copy on every range request)
reads no database row.

A pin nobody can serve when it is asked for (its owner and every member
holding a copy offline) is recorded all the same, in the state ``waiting``
and without its manifest (``wait``): the manager resumes it like a paused
pin, and its first ``begin`` stores the manifest and makes room for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from node.blobs import BlobStore, BlockData, PinWriter
from node.service import visible_to
from node.store import CmaStore
from priv_network.errors import Conflict, InsufficientStorage, InvalidInput, NotFound
from priv_network.interfaces import ContentFile
from priv_network.manifest import HASH_LEN, block_count
from priv_network.wire import ItemInfo

log = logging.getLogger(__name__)

PROGRESS_BYTES = 64 * 1024 * 1024  # a fetch records its progress at least every this many bytes ...
PROGRESS_SECONDS = 1.0  # ... or this often, whichever comes first
WATCHED_EVERY = 60.0  # seconds: a copy's last_watched_at is written at most this often


@dataclass
class _Fetch:
    """A pin being fetched: its open partial copy (which holds the manifest) and its progress."""

    writer: PinWriter
    recorded: int  # verified bytes last written to the database
    recorded_at: float
    syncing: asyncio.Future[None] | None = None  # the partial copy being written to disk meanwhile

    @property
    def verified(self) -> int:
        return self.writer.verified


class Pins:
    def __init__(self, *, store: CmaStore, blobs: BlobStore, executor: Executor, budget: int) -> None:
        self._store = store
        self._blobs = blobs
        self._executor = executor
        self.budget = budget
        self._fetching: dict[str, _Fetch] = {}
        self._opening = asyncio.Lock()  # begin() opens a partial copy once, however often it is called
        self._complete: dict[str, dict[str, Any]] | None = None  # complete pins by content hash (no manifest)
        self._watched: dict[str, float] = {}  # when last_watched_at was last written, per copy

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _current(self, row: dict[str, Any]) -> dict[str, Any]:
        """A pin's row with the progress of a fetch under way (recorded in the database only now and then)."""
        live = self._fetching.get(row["content_hash"])
        if live is not None and row["state"] != "complete":
            row = {**row, "verified_bytes": live.verified}
        return row

    async def _complete_pins(self) -> dict[str, dict[str, Any]]:
        if self._complete is None:
            rows = await self._store.list_pins()
            self._complete = {
                r["content_hash"]: {k: v for k, v in r.items() if k != "manifest"}
                for r in rows
                if r["state"] == "complete"
            }
        return self._complete

    async def list(self) -> list[dict[str, Any]]:
        return [self._current(r) for r in await self._store.list_pins()]

    async def get(self, content_hash: str) -> dict[str, Any] | None:
        row = await self._store.get_pin(content_hash)
        return self._current(row) if row is not None else None

    async def begin(self, item: ItemInfo, manifest: bytes) -> int:
        """Start or resume pinning ``item``; returns the verified bytes already on disk.

        The first call opens the partial copy (checking what it holds); later
        calls while the fetch is under way answer from memory.
        """
        if len(manifest) != HASH_LEN * block_count(item.size, item.block_size):
            raise InvalidInput("manifest does not fit the item")
        async with self._opening:
            live = self._fetching.get(item.content_hash)
            if live is not None:
                return live.verified
            row = await self._store.get_pin(item.content_hash)
            if row is not None and row["state"] == "complete":
                return int(row["size"])
            if row is None:
                row = await self._create(item, manifest)
            elif not row["manifest"]:  # recorded while nobody could serve it: its bytes start coming now
                await self._check_room(item)
                await self._make_room(item.size, item.content_hash)
                await self._store.update_pin(item.content_hash, {"manifest": manifest, "state": "fetching"})
                row = {**row, "manifest": manifest, "state": "fetching"}
            writer: PinWriter = await self._run(
                self._blobs.open_pin, item.content_hash, row["manifest"], int(row["block_size"]), int(row["size"])
            )
            now = time.monotonic()
            self._fetching[item.content_hash] = _Fetch(writer=writer, recorded=writer.verified, recorded_at=now)
        await self._store.update_pin(
            item.content_hash, {"verified_bytes": writer.verified, "state": "fetching", "error": None}
        )
        return writer.verified

    async def wait(self, item: ItemInfo, reason: str) -> None:
        """Record a pin of ``item`` that nobody can serve now (``reason`` says why), without its manifest.

        It shows as waiting until a ``begin`` (when its owner or a holder is
        back) stores the manifest. A pin already recorded only takes the new
        reason. An item that could never fit (the budget, the free disk) is
        refused here, and nothing is recorded.
        """
        async with self._opening:
            row = await self._store.get_pin(item.content_hash)
            if row is not None:
                if row["state"] != "complete" and item.content_hash not in self._fetching:
                    await self._store.update_pin(item.content_hash, {"error": reason[:300]})
                return
            await self._check_room(item)
            await self._store.insert_pin(self._new_row(item, b"", state="waiting", error=reason[:300]))

    async def _check_room(self, item: ItemInfo) -> None:
        """Refuse an item larger than the pin budget or than the free disk (nothing is evicted)."""
        if self.budget > 0 and item.size > self.budget:
            raise InsufficientStorage(
                f"the item ({item.size} bytes) is larger than the pin budget ({self.budget} bytes)"
            )
        free = await self._run(self._blobs.free_bytes)
        if item.size > free - self._blobs.min_free:
            raise InsufficientStorage(
                f"not enough free disk to pin {item.title!r}: it needs {item.size} bytes, {free} are free"
            )

    async def _create(self, item: ItemInfo, manifest: bytes) -> dict[str, Any]:
        await self._check_room(item)
        await self._make_room(item.size, item.content_hash)
        row = self._new_row(item, manifest, state="fetching", error=None)
        await self._store.insert_pin(row)
        return row

    @staticmethod
    def _new_row(item: ItemInfo, manifest: bytes, *, state: str, error: str | None) -> dict[str, Any]:
        now = time.time()
        row: dict[str, Any] = {
            "content_hash": item.content_hash,
            "owner": item.node,
            "item_id": item.id,
            "title": item.title,
            "mime": item.mime,
            "visibility": item.visibility,
            "size": item.size,
            "block_size": item.block_size,
            "manifest": manifest,
            "manifest_hash": item.manifest_hash,
            "state": state,
            "verified_bytes": 0,
            "error": error,
            "created_at": now,
            "last_watched_at": now,
        }
        return row

    async def _make_room(self, size: int, keep: str) -> None:
        """Evict complete copies, least recently watched first, until ``size`` more bytes fit the budget.

        ``keep`` is the pin the room is for: if it is already recorded (a
        waiting pin), its own size is not counted twice.
        """
        if self.budget <= 0:
            return
        rows = await self._store.list_pins()
        used = sum(int(r["size"]) for r in rows if r["content_hash"] != keep)
        for row in sorted((r for r in rows if r["state"] == "complete"), key=lambda r: r["last_watched_at"]):
            if used + size <= self.budget:
                break
            if row["content_hash"] == keep:
                continue
            log.info("pin budget: evicting %s (%s), least recently watched", row["title"], row["content_hash"][:12])
            await self.remove(row["content_hash"])
            used -= int(row["size"])
        if used + size > self.budget:
            raise InsufficientStorage("the pin budget is full of pins that are still being fetched or waiting")

    async def write_block(self, content_hash: str, index: int, data: BlockData) -> int:
        """Check one block the manager fetched against the manifest and write it. Returns verified bytes.

        Blocks come in order, from where ``begin`` said the copy stands;
        ``data`` may be the block's network chunks, in order (nothing is
        joined). ``InvalidInput`` means the data does not match the manifest
        (nothing of it is written); ``Conflict``, a block out of order.
        """
        live = self._fetching.get(content_hash)
        if live is None:
            if await self._store.get_pin(content_hash) is None:
                raise NotFound("no such pin (it was removed)")
            raise Conflict("the pin is not being fetched: begin() it first")
        if not await self._run(live.writer.append, index, data):
            raise InvalidInput(f"block {index} does not match the manifest")
        done = live.verified
        now = time.monotonic()
        if (
            done == live.writer.size
            or done - live.recorded >= PROGRESS_BYTES
            or now - live.recorded_at >= PROGRESS_SECONDS
        ):
            live.recorded, live.recorded_at = done, now
            if done < live.writer.size and (live.syncing is None or live.syncing.done()):
                # The disk writes what is there while the next blocks come: the final fsync is short.
                live.syncing = asyncio.ensure_future(self._run(live.writer.sync))
            await self._store.update_pin(content_hash, {"verified_bytes": done})
        return done

    async def _settle(self, live: _Fetch) -> None:
        """Wait for a sync of the partial copy still under way (its error, if any, is the commit's)."""
        if live.syncing is not None:
            await asyncio.gather(live.syncing, return_exceptions=True)

    async def _close(self, live: _Fetch) -> None:
        await self._settle(live)
        await self._run(live.writer.close)

    async def finish(self, content_hash: str) -> None:
        """Check the whole copy and make it usable (it enters the store under its content hash)."""
        async with self._opening:  # a begin() meanwhile would open a new partial copy
            row = await self._store.get_pin(content_hash)
            live = self._fetching.pop(content_hash, None)
            if row is None:
                if live is not None:
                    await self._close(live)
                raise NotFound("no such pin (it was removed)")
            size = int(row["size"])
            if live is not None:
                await self._settle(live)
                writer = live.writer
            else:  # no fetch under way (a copy found complete on disk): opening it checks every block
                writer = await self._open(row)
            try:
                await self._run(writer.commit)
            except Exception as exc:
                await self._run(writer.close)
                values = {"verified_bytes": writer.verified, "error": str(exc)[:300]}  # 0 if it was discarded
                await self._store.update_pin(content_hash, values)
                raise
            await self._store.update_pin(
                content_hash, {"state": "complete", "verified_bytes": size, "error": None}, publish=True
            )
            complete = await self._complete_pins()
            complete[content_hash] = {
                **{k: v for k, v in row.items() if k != "manifest"},
                "state": "complete",
                "verified_bytes": size,
                "error": None,
            }
        log.info("pinned %s (%s) complete and verified", row["title"], content_hash[:12])

    async def _open(self, row: dict[str, Any]) -> PinWriter:
        writer: PinWriter = await self._run(
            self._blobs.open_pin, row["content_hash"], row["manifest"], int(row["block_size"]), int(row["size"])
        )
        return writer

    async def fail(self, content_hash: str, error: str) -> None:
        live = self._fetching.pop(content_hash, None)
        values: dict[str, Any] = {"error": error[:300]}
        if live is not None:
            values["verified_bytes"] = live.verified
            await self._close(live)
        await self._store.update_pin(content_hash, values)

    async def close(self) -> None:
        """At shutdown: record how far each fetch got and close its partial copy."""
        fetching, self._fetching = self._fetching, {}
        for content_hash, live in fetching.items():
            await self._close(live)
            await self._store.update_pin(content_hash, {"verified_bytes": live.verified})

    async def set_visibility(self, content_hash: str, visibility: str) -> None:
        await self._store.update_pin(content_hash, {"visibility": visibility}, publish=True)
        copy = (await self._complete_pins()).get(content_hash)
        if copy is not None:
            copy["visibility"] = visibility

    async def file_for(self, content_hash: str, viewer: str) -> ContentFile:
        """A complete copy for a peer the owner's rules let see it; otherwise it does not exist."""
        row = (await self._complete_pins()).get(content_hash)
        if row is None or not visible_to(row["visibility"], viewer):
            raise NotFound(f"no copy of {content_hash[:16]}")
        return ContentFile(
            path=self._blobs.blob_path(content_hash), mime=row["mime"], size=int(row["size"]), etag=content_hash
        )

    async def remove(self, content_hash: str) -> None:
        live = self._fetching.pop(content_hash, None)
        if live is not None:
            await self._close(live)
        (await self._complete_pins()).pop(content_hash, None)
        self._watched.pop(content_hash, None)
        if await self._store.get_pin(content_hash) is None:
            raise NotFound("no such pin")
        blob_free = await self._store.delete_pin(content_hash)
        await self._run(lambda: self._blobs.delete_pin_files(content_hash, blob_too=blob_free))

    async def local_file(self, content_hash: str) -> ContentFile | None:
        """The complete pinned copy of this content, if there is one (and mark it watched)."""
        row = (await self._complete_pins()).get(content_hash)
        if row is None:
            return None
        path = self._blobs.blob_path(content_hash)
        if not path.exists():
            return None
        now = time.time()
        if now - self._watched.get(content_hash, 0.0) > WATCHED_EVERY:
            self._watched[content_hash] = now
            await self._store.update_pin(content_hash, {"last_watched_at": now})
        return ContentFile(path=path, mime=row["mime"], size=int(row["size"]), etag=content_hash)
