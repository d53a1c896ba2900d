"""Pinned copies of peers' items, as the CMA keeps them.

The manager fetches and checks blocks; this class is the only writer of
the copy. It checks every block again against the manifest before it
writes it, keeps the partial copy in ``pins/`` (so a pin resumes from its
verified blocks after a cut or a restart), checks the whole file against
its content hash before the copy is usable, and keeps pinned copies within
the storage budget by evicting the least recently watched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any

from node.blobs import BlobStore
from node.service import visible_to
from node.store import CmaStore
from priv_network.errors import InsufficientStorage, InvalidInput, NotFound
from priv_network.interfaces import ContentFile
from priv_network.manifest import HASH_LEN, block_count, block_hash
from priv_network.wire import ItemInfo

log = logging.getLogger(__name__)

PROGRESS_EVERY = 16  # blocks between progress records while a pin is fetched


class Pins:
    def __init__(self, *, store: CmaStore, blobs: BlobStore, executor: Executor, budget: int) -> None:
        self._store = store
        self._blobs = blobs
        self._executor = executor
        self.budget = budget
        self._fetching: dict[str, dict[str, Any]] = {}

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _current(self, row: dict[str, Any]) -> dict[str, Any]:
        """A pin's row with the progress of a fetch under way (recorded in the database only now and then)."""
        live = self._fetching.get(row["content_hash"])
        if live is not None and row["state"] != "complete":
            row = {**row, "verified_bytes": live["verified_bytes"]}
        return row

    async def list(self) -> list[dict[str, Any]]:
        return [self._current(r) for r in await self._store.list_pins()]

    async def get(self, content_hash: str) -> dict[str, Any] | None:
        row = await self._store.get_pin(content_hash)
        return self._current(row) if row is not None else None

    async def begin(self, item: ItemInfo, manifest: bytes) -> int:
        """Start or resume pinning ``item``; returns the verified bytes already on disk."""
        self._fetching.pop(item.content_hash, None)
        if len(manifest) != HASH_LEN * block_count(item.size, item.block_size):
            raise InvalidInput("manifest does not fit the item")
        row = await self._store.get_pin(item.content_hash)
        if row is not None and row["state"] == "complete":
            return int(row["size"])
        if row is None:
            free = await self._run(self._blobs.free_bytes)
            if item.size > free - self._blobs.min_free:
                raise InsufficientStorage(
                    f"not enough free disk to pin {item.title!r}: it needs {item.size} bytes, {free} are free"
                )
            await self._make_room(item.size, item.content_hash)
            now = time.time()
            await self._store.insert_pin(
                {
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
                    "state": "fetching",
                    "verified_bytes": 0,
                    "created_at": now,
                    "last_watched_at": now,
                }
            )
        done = await self._run(self._blobs.verified_prefix, item.content_hash, manifest, item.block_size, item.size)
        await self._store.update_pin(item.content_hash, {"verified_bytes": done, "state": "fetching", "error": None})
        return int(done)

    async def _make_room(self, size: int, keep: str) -> None:
        if self.budget <= 0:
            return
        rows = await self._store.list_pins()
        used = sum(int(r["size"]) for r in rows)
        if size > self.budget:
            raise InsufficientStorage(f"the item ({size} bytes) is larger than the pin budget ({self.budget} bytes)")
        for row in sorted((r for r in rows if r["state"] == "complete"), key=lambda r: r["last_watched_at"]):
            if used + size <= self.budget:
                break
            if row["content_hash"] == keep:
                continue
            log.info("pin budget: evicting %s (%s), least recently watched", row["title"], row["content_hash"][:12])
            await self.remove(row["content_hash"])
            used -= int(row["size"])
        if used + size > self.budget:
            raise InsufficientStorage("the pin budget is full of pins that are still being fetched")

    async def write_block(self, content_hash: str, index: int, data: bytes) -> int:
        """Write one block the manager fetched; checked again here. Returns verified bytes.

        The pin's row is kept in memory while it is fetched, and progress is
        recorded every few blocks: a resume checks the partial copy on disk
        block by block anyway, so the recorded figure may lag behind safely.
        """
        row = self._fetching.get(content_hash)
        if row is None:
            row = await self._store.get_pin(content_hash)
            if row is None:
                raise NotFound("no such pin (it was removed)")
            self._fetching[content_hash] = row
        bs = int(row["block_size"])
        offset = index * bs
        if offset != int(row["verified_bytes"]):
            raise InvalidInput(f"pin blocks must arrive in order (expected offset {row['verified_bytes']})")
        expected = row["manifest"][index * HASH_LEN : (index + 1) * HASH_LEN]
        if len(data) != min(bs, int(row["size"]) - offset) or block_hash(data) != expected:
            raise InvalidInput(f"block {index} does not match the manifest")
        await self._run(self._blobs.write_pin_block, content_hash, offset, data)
        done = offset + len(data)
        row["verified_bytes"] = done
        if index % PROGRESS_EVERY == 0 or done == int(row["size"]):
            await self._store.update_pin(content_hash, {"verified_bytes": done})
        return done

    async def finish(self, content_hash: str) -> None:
        self._fetching.pop(content_hash, None)
        row = await self._store.get_pin(content_hash)
        if row is None:
            raise NotFound("no such pin (it was removed)")
        try:
            await self._run(self._blobs.commit_pin, content_hash, int(row["size"]))
        except Exception as exc:
            await self._store.update_pin(content_hash, {"verified_bytes": 0, "error": str(exc)[:300]})
            raise
        await self._store.update_pin(content_hash, {"state": "complete", "error": None}, publish=True)
        log.info("pinned %s (%s) complete and verified", row["title"], content_hash[:12])

    async def fail(self, content_hash: str, error: str) -> None:
        row = self._fetching.pop(content_hash, None)
        values: dict[str, Any] = {"error": error[:300]}
        if row is not None:
            values["verified_bytes"] = row["verified_bytes"]
        await self._store.update_pin(content_hash, values)

    async def set_visibility(self, content_hash: str, visibility: str) -> None:
        await self._store.update_pin(content_hash, {"visibility": visibility}, publish=True)

    async def file_for(self, content_hash: str, viewer: str) -> ContentFile:
        """A complete copy for a peer the owner's rules let see it; otherwise it does not exist."""
        row = await self._store.get_pin(content_hash)
        if row is None or row["state"] != "complete" or not visible_to(row["visibility"], viewer):
            raise NotFound(f"no copy of {content_hash[:16]}")
        return ContentFile(
            path=self._blobs.blob_path(content_hash), mime=row["mime"], size=int(row["size"]), etag=content_hash
        )

    async def remove(self, content_hash: str) -> None:
        self._fetching.pop(content_hash, None)
        if await self._store.get_pin(content_hash) is None:
            raise NotFound("no such pin")
        blob_free = await self._store.delete_pin(content_hash)
        await self._run(lambda: self._blobs.delete_pin_files(content_hash, blob_too=blob_free))

    async def local_file(self, content_hash: str) -> ContentFile | None:
        """The complete pinned copy of this content, if there is one (and mark it watched)."""
        row = await self._store.get_pin(content_hash)
        if row is None or row["state"] != "complete":
            return None
        path = self._blobs.blob_path(content_hash)
        if not path.exists():
            return None
        if time.time() - row["last_watched_at"] > 60:
            await self._store.update_pin(content_hash, {"last_watched_at": time.time()})
        return ContentFile(path=path, mime=row["mime"], size=int(row["size"]), etag=content_hash)
