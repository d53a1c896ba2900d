"""A share link's byte allowance: N downloads are N times the file's bytes, whatever the requests."""

from __future__ import annotations

import random
from typing import Any, cast

import pytest

from node import shares as shares_module
from node.service import ContentManager
from node.shares import Shares
from node.store import CmaStore
from priv_network.identity import NodeIdentity

SIZE = 1_000_000


class CountingStore:
    """The one store call the allowance makes: count a download while the link has one left."""

    def __init__(self, max_downloads: int | None) -> None:
        self.max_downloads = max_downloads
        self.downloads = 0

    async def count_share_download(self, share_id: str) -> bool:
        if self.max_downloads is not None and self.downloads >= self.max_downloads:
            return False
        self.downloads += 1
        return True


def make(max_downloads: int | None) -> tuple[Shares, CountingStore]:
    store = CountingStore(max_downloads)
    shares = Shares(
        store=cast(CmaStore, store),
        cma=cast(ContentManager, None),
        identity=NodeIdentity.generate(),
        url="http://127.0.0.1:1",
    )
    return shares, store


def row(shares: Shares, store: CountingStore) -> dict[str, Any]:
    return {"id": "s", "max_downloads": store.max_downloads, "downloads": store.downloads}


async def send(shares: Shares, start: int, stop: int) -> int:
    """One response for bytes [start, stop), piece by piece as ShareServe sends it; returns bytes sent."""
    sent = 0
    while start + sent < stop:
        n = await shares.take("s", SIZE, min(shares_module.CHUNK, stop - start - sent))
        if n == 0:
            break
        sent += n
    return sent


async def test_one_download_then_nothing_more() -> None:
    shares, store = make(1)
    assert await send(shares, 0, SIZE) == SIZE
    assert store.downloads == 1
    assert shares._used_up(row(shares, store))
    # The API refuses anything more before sending (used up); were it let in, it would get the
    # margin, once, and then nothing.
    assert await send(shares, 1, SIZE) == SIZE // 8
    assert await send(shares, 1, SIZE) == 0


async def test_a_broken_download_resumes_within_the_margin() -> None:
    shares, store = make(1)
    # The connection breaks: 600 kB were handed to the network, only 550 kB arrived.
    assert await send(shares, 0, 600_000) == 600_000
    shares.interrupted("s", 600_000)
    assert not shares._used_up(row(shares, store))
    assert await send(shares, 550_000, SIZE) == SIZE - 550_000  # the resume finishes
    assert store.downloads == 1
    # What is left: the margin less what the broken connection lost; a break gives nothing back now.
    shares.interrupted("s", 100_000)
    assert await send(shares, 0, SIZE) == SIZE // 8 - 50_000
    assert shares._used_up(row(shares, store))


async def test_interruptions_cannot_add_up_to_another_copy() -> None:
    shares, _store = make(1)
    total = 0
    for _ in range(50):
        got = await send(shares, 0, 10_000)
        total += got
        shares.interrupted("s", got)
    total += await send(shares, 0, SIZE)
    assert total <= SIZE + SIZE // 8


@pytest.mark.parametrize("limit", [1, 2, 5])
async def test_any_requests_get_at_most_n_copies_and_a_margin(limit: int) -> None:
    rnd = random.Random(limit)
    shares, store = make(limit)
    total = 0
    for _ in range(200):
        start = rnd.randrange(SIZE)
        stop = rnd.randrange(start + 1, SIZE + 1)
        got = await send(shares, start, stop)
        total += got
        if rnd.random() < 0.3:
            shares.interrupted("s", got)
    assert store.downloads == limit
    assert total <= limit * SIZE + SIZE // 8


async def test_the_margin_is_at_most_16_mib() -> None:
    shares, _store = make(1)
    big = 10 * 1024**3
    assert await shares.take("s", big, 1) == 1
    allowance = shares._allowances["s"]
    assert (allowance.credit, allowance.margin) == (big - 1, shares_module.MARGIN)


async def test_without_a_limit_downloads_are_counted_per_file_of_bytes() -> None:
    shares, store = make(None)
    for _ in range(3):
        assert await send(shares, 0, SIZE) == SIZE
    assert store.downloads == 3
    assert await send(shares, 0, 10) == 10
    assert store.downloads == 4
    assert not shares._used_up(row(shares, store))
