"""The broker's parts that need no network: cutting a body into blocks, and what it remembers.

``BlockReader`` hands blocks over as the chunks they arrived in (nothing is
joined) and refuses a body that ends inside a block. The broker remembers
an item's registry rows between range requests, until a sync round or a
penalty may have changed them, or a few seconds have passed.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import deque
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest

from priv_network.errors import NotFound
from priv_network.wire import ItemInfo
from registry import transfer
from registry.search import Hit
from registry.store import RegistryStore
from registry.transfer import BlockReader, Broker

OWNER = "OWNER-NODE"
HOLDER = "HOLDER-NODE"
ITEM_ID = "abcdefghijklmnopqrstuvwxyz"


class FakeBody:
    """``readchunk`` over a list of (bytes, end of HTTP chunk), then the end of the body."""

    def __init__(self, chunks: list[tuple[bytes, bool]]) -> None:
        self._chunks = deque(chunks)

    async def readchunk(self) -> tuple[bytes, bool]:
        return self._chunks.popleft() if self._chunks else (b"", False)


def reader(chunks: list[tuple[bytes, bool]]) -> BlockReader:
    return BlockReader(cast(aiohttp.StreamReader, FakeBody(chunks)))


async def test_blocks_come_as_the_chunks_they_arrived_in() -> None:
    data = secrets.token_bytes(10_000)
    cuts = [0, 1, 2500, 2600, 7000, 10_000]
    chunks = [(data[a:b], False) for a, b in itertools.pairwise(cuts)]
    chunks.insert(2, (b"", True))  # the end of an HTTP chunk carries no data
    blocks = reader(chunks)
    first = await blocks.read(4096)
    assert b"".join(first) == data[:4096]
    assert [len(p) for p in first] == [1, 2499, 100, 1496]  # the last chunk was cut, not copied
    rest = await blocks.read(10_000 - 4096)
    assert b"".join(rest) == data[4096:]
    with pytest.raises(asyncio.IncompleteReadError):
        await blocks.read(1)


async def test_a_body_that_ends_inside_a_block_is_refused() -> None:
    blocks = reader([(b"x" * 100, False)])
    with pytest.raises(asyncio.IncompleteReadError):
        await blocks.read(101)


class FakeRegistry:
    """The two lookups the broker makes per item, counted."""

    def __init__(self) -> None:
        self.lookups = 0
        self.online = True
        self.holders_online = True

    async def entry_by_item(self, item_id: str) -> Hit | None:
        self.lookups += 1
        if item_id != ITEM_ID:
            return None
        row = {"item_id": item_id, "node_id": OWNER, "source_url": "http://owner.test"}
        return Hit(row=row, source_name="owner", online=self.online)

    async def holders(self, hashes: list[str]) -> dict[str, list[dict[str, Any]]]:
        holder = {"node_id": HOLDER, "name": "holder", "url": "http://holder.test", "online": self.holders_online}
        return {h: [holder] for h in hashes}


def item_of(row: dict[str, object]) -> ItemInfo:
    return ItemInfo(
        id=str(row["item_id"]),
        node=str(row["node_id"]),
        title="Film",
        kind="video",
        mime="video/mp4",
        size=1000,
        content_hash="c" * 64,
        block_size=64 * 1024,
        manifest_hash="m" * 64,
        has_poster=False,
        visibility="network",
        created_at=0.0,
        updated_at=0.0,
    )


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def broker(registry: FakeRegistry) -> Broker:
    async def penalize(node_id: str, reason: str) -> None:
        pass

    async def count(subject: str, direction: str, n: int) -> None:
        pass

    traffic = type("Meter", (), {"add": staticmethod(count)})()
    return Broker(
        store=cast(RegistryStore, registry), node_id="ME", to_item=item_of, penalize=penalize, traffic=traffic
    )


async def test_an_items_rows_are_remembered_between_requests(broker: Broker, registry: FakeRegistry) -> None:
    remote = await broker.remote_item(ITEM_ID)
    assert [(s.node_id, s.online) for s in remote.sources()] == [(OWNER, True), (HOLDER, True)]
    for _ in range(10):
        assert await broker.remote_item(ITEM_ID) is remote
    assert registry.lookups == 1

    # A sync round may have changed them: asked again.
    registry.online = False
    await broker.forget()
    remote = await broker.remote_item(ITEM_ID)
    assert [s.node_id for s in remote.sources()] == [HOLDER, OWNER]
    assert registry.lookups == 2

    # A penalty backs a peer off: the next request orders the sources again.
    await broker.penalize(HOLDER, "sent a corrupt block")
    await broker.remote_item(ITEM_ID)
    assert registry.lookups == 3


async def test_remembered_rows_expire(broker: Broker, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(monotonic=lambda: 1000.0)
    monkeypatch.setattr(transfer, "time", clock)  # the broker's clock only
    await broker.remote_item(ITEM_ID)
    clock.monotonic = lambda: 1000.0 + transfer.ITEM_CACHE_SECONDS - 0.1
    await broker.remote_item(ITEM_ID)
    assert registry.lookups == 1
    clock.monotonic = lambda: 1000.0 + transfer.ITEM_CACHE_SECONDS + 0.1
    await broker.remote_item(ITEM_ID)
    assert registry.lookups == 2


async def test_unknown_items_are_not_remembered(broker: Broker, registry: FakeRegistry) -> None:
    for _ in range(2):
        with pytest.raises(NotFound, match="no item"):
            await broker.remote_item("z" * 26)
    assert registry.lookups == 2
