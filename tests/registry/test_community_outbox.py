"""The outbox's delivery rules, against a real registry database and a scripted owner.

``CommunityService.deliver`` sends each owner its due messages oldest first,
in inbox requests bounded in count and bytes, every owner at once; it stops
at an owner's first failed request and holds all that owner's messages back
until one retry time (so no later message overtakes one to be retried); it
reads an owner's feed back once per run, before accepted messages leave the
outbox; and a call while a delivery runs does not wait for it (a sync round
is never held up) but makes the running one look again. The owner here is a stand-in for ``PeerClient``
that records every request and answers as each test scripts it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa

from priv_network import db
from priv_network.errors import PrivNetworkError
from priv_network.interfaces import Peer
from priv_network.peerclient import PeerUnreachable
from registry import community
from registry.community import CommunityService
from registry.models import outbox
from registry.store import RegistryStore

OWNERS = {"OWNER-A": "http://a.example", "OWNER-B": "http://b.example"}
Answer = Callable[[str, list[dict[str, Any]]], Awaitable[dict[str, Any]]]


async def accept_all(_url: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"results": {m["id"]: "ok" for m in messages}}


class Owners:
    """Stands in for the node's ``PeerClient``: records each inbox request, answers with ``answer``."""

    def __init__(self, answer: Answer = accept_all) -> None:
        self.answer = answer
        self.requests: list[tuple[str, list[dict[str, Any]], int]] = []

    async def post(self, url: str, path: str, body: Any) -> Any:
        assert path == "/federation/v1/inbox"
        size = len(json.dumps(body, separators=(",", ":")))
        self.requests.append((url, body["messages"], size))
        return await self.answer(url, body["messages"])

    def ids_sent_to(self, url: str) -> list[str]:
        return [m["id"] for u, batch, _size in self.requests if u == url for m in batch]


class Directory:
    async def active_peers(self) -> list[Peer]:
        return [Peer(node_id=k, name=k.lower(), url=v) for k, v in OWNERS.items()]

    async def apply_roster_events(self, events: Any, source: str) -> int:
        return 0


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[RegistryStore]:
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    try:
        yield RegistryStore(engine)
    finally:
        await engine.dispose()


def service(
    store: RegistryStore,
    owners: Owners,
    refreshed: list[tuple[str, int]],
    refresh: Callable[[str], Awaitable[None]] | None = None,
) -> CommunityService:
    async def read_back(node_id: str) -> None:
        # What is still in the outbox when the owner's feed is read back.
        refreshed.append((node_id, len(await store.outbox_all())))

    svc = CommunityService(
        store=store,
        local=None,  # type: ignore[arg-type]  # delivery never touches this node's own items
        directory=Directory(),
        node_id="SELF",
        node_name="self",
        view_threshold=30.0,
        view_window=6 * 3600.0,
        max_length=20000,
        refresh=refresh or read_back,
    )
    svc.set_client(owners)  # type: ignore[arg-type]
    return svc


async def enqueue(store: RegistryStore, owner: str, n: int, *, body: str = "x") -> list[str]:
    """``n`` comments for ``owner``, due now, created one after the other; returns their IDs in order."""
    now = time.time()
    payload = json.dumps({"item": "i" * 26, "parent": None, "depth": 0, "author": "ann", "body": body})
    ids = [f"{owner[-1]}{i:031x}".lower() for i in range(n)]
    rows: list[dict[str, Any]] = [
        {
            "id": ids[i],
            "node_id": owner,
            "kind": "comment",
            "payload": payload,
            "created_at": now + i * 1e-3,
            "attempts": 0,
            "next_attempt_at": now - 1,
        }
        for i in range(n)
    ]
    async with store.engine.begin() as conn:
        await conn.execute(sa.insert(outbox), rows)
    return ids


async def test_every_message_is_delivered_once_in_order_in_bounded_batches(store: RegistryStore) -> None:
    sent = {owner: await enqueue(store, owner, 2300) for owner in OWNERS}
    owners, refreshed = Owners(), list[tuple[str, int]]()
    svc = service(store, owners, refreshed)

    assert await svc.deliver() == 4600
    for owner, url in OWNERS.items():
        assert owners.ids_sent_to(url) == sent[owner]  # each once, oldest first
    assert all(len(batch) <= community.BATCH for _u, batch, _s in owners.requests)
    assert len(owners.requests) == 6  # 1000 + 1000 + 300 per owner
    # Each owner's feed is read back once, while its accepted messages are still in the outbox.
    assert sorted(node for node, _left in refreshed) == sorted(OWNERS)
    assert all(left > 0 for _node, left in refreshed)
    assert await store.outbox_all() == []


async def test_long_comments_are_split_under_the_owners_request_limit(store: RegistryStore) -> None:
    await enqueue(store, "OWNER-A", 120, body="\u00e9" * 5000)  # 30 KB each in JSON
    owners = Owners()
    assert await service(store, owners, []).deliver() == 120
    assert len(owners.requests) > 1
    assert all(size <= community.BATCH_BYTES + 1024 for _u, _batch, size in owners.requests)


async def test_an_owners_failure_holds_back_all_its_messages_in_order_and_spares_the_others(
    store: RegistryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(community, "PASS_LIMIT", 3000)  # A's messages span more than one pass
    sent_a = await enqueue(store, "OWNER-A", 2500)
    sent_b = await enqueue(store, "OWNER-B", 1500)

    async def a_fails_second_time(url: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        if url == OWNERS["OWNER-A"] and len([u for u, _b, _s in owners.requests if u == url]) == 2:
            raise PeerUnreachable("cannot reach a: timed out")
        return await accept_all(url, messages)

    owners = Owners(a_fails_second_time)
    assert await service(store, owners, []).deliver() == 1000 + 1500
    # A: the first batch went through, the second failed, and nothing after it was tried,
    # in this pass or the next (which would have sent replies before the comments they answer).
    a_requests = [batch for u, batch, _s in owners.requests if u == OWNERS["OWNER-A"]]
    assert len(a_requests) == 2
    assert owners.ids_sent_to(OWNERS["OWNER-A"]) == sent_a[: 1000 + len(a_requests[1])]
    assert owners.ids_sent_to(OWNERS["OWNER-B"]) == sent_b
    left = await store.outbox_all()
    assert [m["id"] for m in left] == sent_a[1000:]
    # Held back together: one retry time for all of them, so they come due again in order.
    assert len({m["next_attempt_at"] for m in left}) == 1
    assert left[0]["next_attempt_at"] > time.time()
    assert {m["attempts"] for m in left} == {1}
    assert {m["last_error"] for m in left} == {"cannot reach a: timed out"}


async def test_refusals_are_final_and_unanswered_messages_are_retried(store: RegistryStore) -> None:
    sent = await enqueue(store, "OWNER-A", 3)

    async def mixed(_url: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {"results": {sent[0]: "ok", sent[1]: "rejected: no item"}}

    owners = Owners(mixed)
    assert await service(store, owners, []).deliver() == 1
    left = {m["id"]: m for m in await store.outbox_all()}
    assert sorted(left) == sent[1:]
    assert (left[sent[1]]["attempts"], left[sent[1]]["last_error"]) == (-1, "no item")
    assert left[sent[2]]["attempts"] == 1 and left[sent[2]]["next_attempt_at"] > time.time()


async def test_a_call_during_a_delivery_does_not_wait_and_the_running_one_looks_again(store: RegistryStore) -> None:
    first = await enqueue(store, "OWNER-A", 10)
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow_owner(url: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        started.set()
        await release.wait()
        return await accept_all(url, messages)

    owners = Owners(slow_owner)
    svc = service(store, owners, [])
    running = asyncio.create_task(svc.deliver())
    await started.wait()
    later = await enqueue(store, "OWNER-B", 5)
    # E.g. a sync round ending: it returns at once instead of waiting for the owner.
    assert await asyncio.wait_for(svc.deliver(), timeout=5) == 0
    release.set()
    assert await running == 15  # the running delivery made another pass and took the new ones too
    assert owners.ids_sent_to(OWNERS["OWNER-A"]) == first
    assert owners.ids_sent_to(OWNERS["OWNER-B"]) == later
    assert await store.outbox_all() == []


async def test_accepted_messages_leave_the_outbox_even_if_reading_the_owner_back_fails(
    store: RegistryStore,
) -> None:
    """The owner has them (a later sync shows them); the error still surfaces, after every
    owner's delivery has finished."""
    await enqueue(store, "OWNER-A", 3)
    await enqueue(store, "OWNER-B", 4)

    async def broken_read_back(node_id: str) -> None:
        if node_id == "OWNER-A":
            raise PrivNetworkError("read-back failed")

    owners = Owners()
    with pytest.raises(PrivNetworkError, match="read-back failed"):
        await service(store, owners, [], refresh=broken_read_back).deliver()
    assert await store.outbox_all() == []
    assert len(owners.ids_sent_to(OWNERS["OWNER-B"])) == 4
