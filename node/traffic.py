"""Bytes sent and received, per peer and per share link, in hourly buckets."""

from __future__ import annotations

import logging
import time
from typing import Any

from node.store import CmaStore

log = logging.getLogger(__name__)


class Traffic:
    def __init__(self, store: CmaStore) -> None:
        self._store = store

    async def add(self, subject: str, direction: str, n: int) -> None:
        if n > 0:
            await self._store.add_traffic(int(time.time() // 3600), subject, direction, n)

    async def totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for subject, direction, n in await self._store.traffic_totals():
            out.setdefault(subject, {"sent": 0, "received": 0})[direction] = n
        return out

    async def history(self, hours: int = 48) -> list[dict[str, Any]]:
        return await self._store.traffic_since(int(time.time() // 3600) - hours)
