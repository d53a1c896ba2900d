"""Bytes sent and received, per peer and per share link, in hourly buckets.

Transfers count their bytes on every request (a player seeking through a
video sends hundreds of range requests), so the counters live in memory and
are written to the database every ``FLUSH_EVERY`` seconds, in one go per
bucket, instead of one write per request. Readers flush first, so
``totals`` and ``history`` are always exact; ``close`` (at shutdown)
flushes what is left. A flush that fails keeps its counts for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from node.store import CmaStore

log = logging.getLogger(__name__)

FLUSH_EVERY = 5.0  # seconds between writes of the in-memory counters

_Bucket = tuple[int, str, str]  # (hour, subject, direction)


class Traffic:
    def __init__(self, store: CmaStore, *, flush_every: float = FLUSH_EVERY) -> None:
        self._store = store
        self._flush_every = flush_every
        self._pending: dict[_Bucket, int] = {}
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._closed = False

    async def add(self, subject: str, direction: str, n: int) -> None:
        if n <= 0:
            return
        key = (int(time.time() // 3600), subject, direction)
        self._pending[key] = self._pending.get(key, 0) + n
        if self._closed:
            await self.flush()
        else:
            self._schedule()

    def _schedule(self) -> None:
        if self._timer is None and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(self._flush_every, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        if self._flushing is not None and not self._flushing.done():
            self._schedule()  # the last flush is still writing: try again later
            return
        self._flushing = asyncio.create_task(self._flush_logged(), name="flush traffic counters")

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:
            log.exception("cannot record traffic counters (kept for the next try)")
        if self._pending:
            self._schedule()

    async def flush(self) -> None:
        """Write the counters gathered since the last flush."""
        async with self._lock:
            items = list(self._pending.items())
            self._pending = {}
            written = 0
            try:
                for (hour, subject, direction), n in items:
                    await self._store.add_traffic(hour, subject, direction, n)
                    written += 1
            finally:
                for key, n in items[written:]:  # not written: counted again at the next flush
                    self._pending[key] = self._pending.get(key, 0) + n

    async def close(self) -> None:
        """At shutdown: write what is left; later counts are written at once."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        try:
            await self.flush()
        except Exception:
            log.exception("cannot record traffic counters at shutdown")

    async def totals(self) -> dict[str, dict[str, int]]:
        await self.flush()
        out: dict[str, dict[str, int]] = {}
        for subject, direction, n in await self._store.traffic_totals():
            out.setdefault(subject, {"sent": 0, "received": 0})[direction] = n
        return out

    async def history(self, hours: int = 48) -> list[dict[str, Any]]:
        await self.flush()
        return await self._store.traffic_since(int(time.time() // 3600) - hours)
