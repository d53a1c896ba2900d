"""Traffic counters: kept in memory, written in one go per bucket, never lost.

Every range request counts its bytes, so ``Traffic`` sums them in memory and
writes each (hour, subject, direction) bucket once per flush. Readers flush
first (the figures are exact), a failed write keeps its counts for the next
flush, and ``close`` writes what is left.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from node.store import CmaStore
from node.traffic import Traffic


class FakeStore:
    """The three traffic queries of CmaStore, over a dict; ``fail`` makes the next writes fail."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, str, str], int] = {}
        self.writes = 0
        self.fail = 0
        self.written = asyncio.Event()

    async def add_traffic(self, hour: int, subject: str, direction: str, n: int) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("database is locked")
        self.writes += 1
        self.rows[hour, subject, direction] = self.rows.get((hour, subject, direction), 0) + n
        self.written.set()

    async def traffic_totals(self) -> list[tuple[str, str, int]]:
        sums: dict[tuple[str, str], int] = {}
        for (_hour, subject, direction), n in self.rows.items():
            sums[subject, direction] = sums.get((subject, direction), 0) + n
        return [(s, d, n) for (s, d), n in sums.items()]

    async def traffic_since(self, hour: int) -> list[dict[str, Any]]:
        return [
            {"hour": h, "subject": s, "direction": d, "bytes": n} for (h, s, d), n in self.rows.items() if h >= hour
        ]


def traffic(store: FakeStore, flush_every: float = 3600.0) -> Traffic:
    return Traffic(cast(CmaStore, store), flush_every=flush_every)


async def test_counts_are_summed_in_memory_and_written_once_per_bucket() -> None:
    store = FakeStore()
    meter = traffic(store)
    for _ in range(100):
        await meter.add("peer:A", "sent", 1000)
        await meter.add("peer:A", "received", 10)
    await meter.add("share:x", "sent", 0)  # nothing moved: nothing counted
    assert store.writes == 0
    assert await meter.totals() == {"peer:A": {"sent": 100_000, "received": 1000}}
    assert store.writes == 2
    # Nothing new: the next reader writes nothing.
    assert [r["bytes"] for r in await meter.history()] == [100_000, 1000]
    assert store.writes == 2


async def test_the_counters_are_written_after_a_while_without_a_reader() -> None:
    store = FakeStore()
    meter = traffic(store, flush_every=0.01)
    await meter.add("peer:A", "sent", 5)
    await asyncio.wait_for(store.written.wait(), timeout=10)
    assert sum(store.rows.values()) == 5
    await meter.close()


async def test_a_failed_write_loses_nothing() -> None:
    store = FakeStore()
    meter = traffic(store)
    await meter.add("peer:A", "sent", 5)
    await meter.add("peer:B", "sent", 7)
    store.fail = 1
    with pytest.raises(OSError, match="locked"):
        await meter.flush()
    await meter.add("peer:A", "sent", 1)
    assert await meter.totals() == {"peer:A": {"sent": 6, "received": 0}, "peer:B": {"sent": 7, "received": 0}}


async def test_close_writes_what_is_left_and_later_counts_at_once() -> None:
    store = FakeStore()
    meter = traffic(store)
    await meter.add("peer:A", "received", 3)
    await meter.close()
    assert sum(store.rows.values()) == 3
    await meter.add("peer:A", "received", 4)  # a transfer ending during shutdown
    assert sum(store.rows.values()) == 7
