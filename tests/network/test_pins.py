"""Pinned copies between real nodes: C mirrors A's items for offline watching.

A pin fetches A's blocks in order, checks each against A's manifest, keeps
the verified prefix on disk (so a cut or a restart resumes from it), checks
the whole file before it is usable, stays within the pin budget, and follows
A's rules: an item A deletes or stops sharing is unpinned at C's next sync.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from node.serving import FileServe
from priv_network.ranges import ByteRange
from tests.network.conftest import NetNode, Network, eventually, group, write_file
from tests.network.test_cli_output import run, run_failing

BS = 64 * 1024
STORE = {"block_size": BS}


def blob_path(node: NetNode, content_hash: str) -> Path:
    return node.config.store_path / "blobs" / content_hash[:2] / content_hash[2:4] / content_hash


def part_path(node: NetNode, content_hash: str) -> Path:
    return node.config.store_path / "pins" / f"{content_hash}.part"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def pins(node: NetNode) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in (await node.api("GET", "/api/v1/pins"))["pins"]}


async def pin_complete(node: NetNode, item_id: str) -> dict[str, Any]:
    reply = await node.call("POST", "/api/v1/pins", json={"id": item_id})
    assert reply.status == 202, reply

    async def complete() -> bool:
        pin = (await pins(node)).get(item_id)
        assert pin is not None and not pin["error"], pin
        return bool(pin["state"] == "complete")

    await eventually(complete, what=f"{node.name}'s pin of {item_id} to complete")
    again = await node.call("POST", "/api/v1/pins", json={"id": item_id})  # nothing to do: 200, not 202
    assert (again.status, again.data["state"]) == (200, "complete"), again
    return (await pins(node))[item_id]


async def traffic(node: NetNode, subject: str) -> dict[str, int]:
    return dict((await node.api("GET", "/api/v1/status"))["traffic"].get(subject, {"sent": 0, "received": 0}))


@dataclass
class Throttle:
    """A's content endpoint sends the body up to byte ``limit``, then waits for ``release``;
    with ``cut`` set it then drops the connection, as a node that goes down mid-transfer."""

    limit: int
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cut: bool = False
    requests: list[tuple[int, int]] = field(default_factory=list)


@pytest.fixture
def throttle(monkeypatch: pytest.MonkeyPatch) -> Iterator[Throttle]:
    """Serve /federation/v1/content/ bodies through a gated copy loop instead of sendfile."""
    gate = Throttle(limit=0)
    original = FileServe._sendfile

    async def gated(self: FileServe, request: web.BaseRequest, fobj: io.BufferedReader, span: ByteRange) -> None:
        if not request.path.startswith("/federation/v1/content/"):
            return await original(self, request, fobj, span)
        offset, count = span.start, span.length
        gate.requests.append((offset, count))
        loop = asyncio.get_running_loop()
        pos, stop = offset, offset + count
        while pos < stop:
            if pos >= gate.limit and not gate.release.is_set():
                gate.waiting.set()
                await gate.release.wait()
            if gate.cut:
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("the node went down")
            end = stop if pos >= gate.limit else min(stop, gate.limit)
            chunk = await loop.run_in_executor(None, os.pread, fobj.fileno(), min(BS, end - pos), pos)
            await self.write(chunk)
            self.body_sent += len(chunk)
            pos += len(chunk)

    monkeypatch.setattr(FileServe, "_sendfile", gated)
    yield gate
    gate.cut = False
    gate.release.set()


async def test_pin_completes_verified_and_unpin_removes_it(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha", store=STORE)
    c = await network.node("gamma", store=STORE)
    await group(a, c)
    source = write_file(tmp_path, "Concert.bin", secrets.token_bytes(2 * 1024 * 1024 + 4321))
    item = (await a.add(source))[0]
    await c.sync()
    stored_before = (await c.api("GET", "/api/v1/status"))["store_bytes"]

    pin = await pin_complete(c, item["id"])
    # The pinned copy is in C's store, and `status` counts it.
    assert (await c.api("GET", "/api/v1/status"))["store_bytes"] == stored_before + source.stat().st_size
    assert (pin["node"], pin["title"], pin["size"], pin["content_hash"]) == (
        a.node_id,
        "Concert",
        source.stat().st_size,
        item["content_hash"],
    )
    assert (pin["verified_bytes"], pin["progress"], pin["error"]) == (source.stat().st_size, 1.0, None)
    copy = blob_path(c, item["content_hash"])
    assert sha256(copy) == sha256(source)
    assert not part_path(c, item["content_hash"]).exists()

    # Pinning again is a no-op that answers the complete pin.
    again = await c.api("POST", "/api/v1/pins", json={"id": item["id"]})
    assert (again["state"], again["verified_bytes"]) == ("complete", source.stat().st_size)

    # A learns that C holds a copy.
    await a.sync()
    [hit] = await a.search("concert")
    assert [h["node"] for h in hit["holders"]] == [c.node_id]

    # Unpin: the copy's file goes, the pin is forgotten, and A learns it too.
    assert (await c.api("DELETE", f"/api/v1/pins/{item['id']}")) == {"unpinned": item["id"]}
    assert not copy.exists()
    assert await pins(c) == {}
    assert (await c.api("GET", "/api/v1/status"))["store_bytes"] == stored_before
    reply = await c.call("DELETE", f"/api/v1/pins/{item['id']}")
    assert reply.status == 404
    assert "not pinned" in reply.message
    await a.sync()
    [hit] = await a.search("concert")
    assert hit["holders"] == []
    # C still streams the item, from A.
    async with c.session.get(f"{c.url}/api/v1/items/{item['id']}/content", headers=c.auth) as resp:
        assert resp.status == 200
        assert await resp.read() == source.read_bytes()
    assert not copy.exists()


async def test_interrupted_pin_resumes_from_its_verified_prefix(
    network: Network, tmp_path: Path, throttle: Throttle
) -> None:
    a = await network.node("alpha", store=STORE)
    c = await network.node("gamma", store=STORE)
    await group(a, c)
    source = write_file(tmp_path, "Long Film.bin", secrets.token_bytes(6 * 1024 * 1024 + 100))
    size = source.stat().st_size
    item = (await a.add(source))[0]
    h = item["content_hash"]
    await c.sync()

    # A sends the first 40 blocks, then goes down in the middle of the transfer.
    cut_at = 40 * BS
    throttle.limit = cut_at
    reply = await c.call("POST", "/api/v1/pins", json={"id": item["id"]})
    assert reply.status == 202, reply
    assert reply.data["state"] == "fetching"

    async def reached_cut() -> bool:
        return throttle.waiting.is_set() and (await pins(c))[item["id"]]["verified_bytes"] == cut_at

    await eventually(reached_cut, what="C to verify the blocks A sent before it stalls")
    throttle.cut = True
    throttle.release.set()
    await a.stop()

    async def paused() -> bool:
        return bool((await pins(c))[item["id"]]["state"] == "paused")

    await eventually(paused, what="C's pin to pause after A went down")
    pin = (await pins(c))[item["id"]]
    assert (pin["verified_bytes"], pin["progress"]) == (cut_at, round(cut_at / size, 4))
    assert "stopped sending" in pin["error"], pin["error"]
    assert part_path(c, h).stat().st_size == cut_at
    assert not blob_path(c, h).exists()
    # Asking again while A is down keeps the verified prefix; the pin pauses again.
    assert (await c.call("POST", "/api/v1/pins", json={"id": item["id"]})).status == 202
    await eventually(paused, what="C's pin to pause again")
    assert (await pins(c))[item["id"]]["verified_bytes"] == cut_at

    # Both come back (C restarted on its data); A now serves at full speed.
    # C resumes at start-up, from the verified prefix, and never goes back.
    throttle.cut = False
    throttle.limit = size
    await c.stop()
    await a.start()
    await c.start()
    seen: list[int] = []

    async def complete() -> bool:
        pin = (await pins(c))[item["id"]]
        seen.append(pin["verified_bytes"])
        return bool(pin["state"] == "complete")

    await eventually(complete, what="the resumed pin to complete")
    assert seen == sorted(seen), seen
    assert min(seen) >= cut_at, seen
    assert sha256(blob_path(c, h)) == sha256(source)
    assert not part_path(c, h).exists()
    # Each byte crossed the wire once: the resumed request started at the cut.
    assert throttle.requests == [(0, size), (cut_at, size - cut_at)]
    assert (await traffic(c, f"peer:{a.node_id}"))["received"] == size
    # A counted what it sent before it went down too (written at its shutdown), so also once each.
    assert (await traffic(a, f"peer:{c.node_id}"))["sent"] == size


async def test_pin_refusals(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha", store=STORE)
    c = await network.node("gamma", store={**STORE, "pin_budget": 1024 * 1024})
    await group(a, c)
    private = (await a.add(write_file(tmp_path, "Diary.txt"), visibility="private"))[0]
    big = (await a.add(write_file(tmp_path, "Huge.bin", secrets.token_bytes(1024 * 1024 + 1))))[0]
    small = (await a.add(write_file(tmp_path, "Small.bin", secrets.token_bytes(300_000))))[0]
    await c.sync()

    unknown = "a" * 26
    for item_id in (private["id"], unknown):
        reply = await c.call("POST", "/api/v1/pins", json={"id": item_id})
        assert reply.status == 404, reply
        assert reply.data["error"]["code"] == "not_found"
        assert f"no item {item_id}" in reply.message
    # A node's own item is already in its store.
    reply = await a.call("POST", "/api/v1/pins", json={"id": small["id"]})
    assert (reply.status, reply.data["error"]["code"]) == (400, "invalid_input"), reply
    assert "this node's own" in reply.message
    assert await pins(a) == {}
    reply = await c.call("POST", "/api/v1/pins", json={"id": "not an id"})
    assert reply.status == 404
    reply = await c.call("POST", "/api/v1/pins", json={})
    assert (reply.status, reply.data["error"]["code"]) == (400, "invalid_input")

    # Larger than the whole budget: 507, and nothing is left behind.
    reply = await c.call("POST", "/api/v1/pins", json={"id": big["id"]})
    assert (reply.status, reply.data["error"]["code"]) == (507, "insufficient_storage")
    assert "pin budget" in reply.message
    assert await pins(c) == {}
    assert not part_path(c, big["content_hash"]).exists()
    # Something that fits is pinned.
    await pin_complete(c, small["id"])
    assert set(await pins(c)) == {small["id"]}


async def test_budget_evicts_the_least_recently_watched(network: Network, tmp_path: Path) -> None:
    size = 300 * 1024
    a = await network.node("alpha", store=STORE)
    c = await network.node("gamma", store={**STORE, "pin_budget": 2 * size + size // 2})
    await group(a, c)
    one, two, three = [
        (await a.add(write_file(tmp_path, f"{name}.bin", secrets.token_bytes(size))))[0]
        for name in ("One", "Two", "Three")
    ]
    await c.sync()
    await pin_complete(c, one["id"])
    await pin_complete(c, two["id"])

    # One was last watched before two (an hour and half an hour ago) ...
    now = time.time()
    for item, ago in ((one, 3600), (two, 1800)):
        await c.sql("UPDATE pins SET last_watched_at = :t WHERE content_hash = :h", t=now - ago, h=item["content_hash"])
    # ... then C's user watches one (from the pinned copy).
    async with c.session.get(f"{c.url}/api/v1/items/{one['id']}/content", headers=c.auth) as resp:
        assert resp.status == 200
        await resp.read()
    assert (await pins(c))[one["id"]]["last_watched_at"] >= now

    # Pinning a third needs room: two, now the least recently watched, goes.
    await pin_complete(c, three["id"])
    assert set(await pins(c)) == {one["id"], three["id"]}
    assert not blob_path(c, two["content_hash"]).exists()
    assert blob_path(c, one["content_hash"]).exists()
    assert (
        sha256(blob_path(c, three["content_hash"])) == hashlib.sha256((tmp_path / "Three.bin").read_bytes()).hexdigest()
    )
    # Two is still watchable, brokered from A.
    async with c.session.get(f"{c.url}/api/v1/items/{two['id']}/content", headers=c.auth) as resp:
        assert resp.status == 200
        assert await resp.read() == (tmp_path / "Two.bin").read_bytes()


async def test_pins_follow_the_owners_rules(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE)
    c = await network.node("gamma", store=STORE)
    await group(a, b, c)
    deleted, narrowed, kept = [
        (await a.add(write_file(tmp_path, f"{name}.bin", secrets.token_bytes(200_000))))[0]
        for name in ("Deleted", "Narrowed", "Kept")
    ]
    await c.sync()
    for item in (deleted, narrowed, kept):
        await pin_complete(c, item["id"])

    # A deletes one item and stops sharing another with C (B may still see it).
    await a.api("DELETE", f"/api/v1/items/{deleted['id']}")
    await a.api("PATCH", f"/api/v1/items/{narrowed['id']}", json={"visibility": f"peers:{b.node_id}"})
    # Nothing changes on C until it syncs.
    assert set(await pins(c)) == {deleted["id"], narrowed["id"], kept["id"]}

    await c.sync()
    assert set(await pins(c)) == {kept["id"]}
    for item in (deleted, narrowed):
        assert not blob_path(c, item["content_hash"]).exists(), item["title"]
        assert not part_path(c, item["content_hash"]).exists(), item["title"]
        reply = await c.call("GET", f"/api/v1/items/{item['id']}/content")
        assert reply.status == 404, item["title"]
    assert sha256(blob_path(c, kept["content_hash"])) == sha256(tmp_path / "Kept.bin")
    # B, still allowed, learns C no longer holds the narrowed item.
    await b.sync()
    [hit] = await b.search("narrowed")
    assert hit["holders"] == []
    [hit] = await b.search("kept")
    assert [h["node"] for h in hit["holders"]] == [c.node_id]


async def waiting_pin(node: NetNode, item_id: str) -> dict[str, Any]:
    """``node`` pins ``item_id`` while nobody can serve it: recorded, waiting, nothing fetched."""
    reply = await node.call("POST", "/api/v1/pins", json={"id": item_id})
    assert reply.status == 202, reply
    assert (reply.data["state"], reply.data["verified_bytes"], reply.data["progress"]) == ("waiting", 0, 0.0)
    assert reply.data == (await pins(node))[item_id]
    return dict(reply.data)


async def test_a_pin_while_its_owner_is_offline_waits_and_completes_when_it_is_back(
    network: Network, tmp_path: Path
) -> None:
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE)
    await group(a, b)
    source = write_file(tmp_path, "Road Movie.bin", secrets.token_bytes(2 * 1024 * 1024 + 99))
    item = (await a.add(source))[0]
    h = item["content_hash"]
    await b.sync()
    await a.stop()  # B's registry still has A online: the pin finds out A is down when it asks

    pin = await waiting_pin(b, item["id"])
    assert (pin["node"], pin["title"], pin["size"], pin["content_hash"]) == (
        a.node_id,
        "Road Movie",
        source.stat().st_size,
        h,
    )
    assert pin["error"] == "alpha is offline; retried on each sync"
    assert not part_path(b, h).exists() and not blob_path(b, h).exists()
    # Asking again keeps the one pin, still waiting.
    await waiting_pin(b, item["id"])
    assert set(await pins(b)) == {item["id"]}

    # A sync while A is down: A is now known offline, so nothing is tried.
    assert str((await b.sync())[a.node_id]).startswith("error")
    assert (await pins(b))[item["id"]]["state"] == "waiting"

    # B restarts meanwhile: the pin is still recorded (and still waits).
    await b.restart()

    async def waiting() -> bool:
        pin = (await pins(b))[item["id"]]
        return bool(pin["state"] == "waiting" and pin["error"])

    await eventually(waiting, what="B's pin to wait again after B's restart")

    # A is back: B's next sync round resumes the pin, which completes verified.
    await a.start()
    assert (await b.sync())[a.node_id] == 0

    async def complete() -> bool:
        return bool((await pins(b))[item["id"]]["state"] == "complete")

    await eventually(complete, what="B's waiting pin to complete once A is back")
    pin = (await pins(b))[item["id"]]
    assert (pin["verified_bytes"], pin["progress"], pin["error"]) == (source.stat().st_size, 1.0, None)
    assert sha256(blob_path(b, h)) == sha256(source)
    assert not part_path(b, h).exists()
    assert (await traffic(b, f"peer:{a.node_id}"))["received"] == source.stat().st_size
    # Now that the copy is complete, A learns that B holds it.
    await a.sync()
    [hit] = await a.search("road movie")
    assert [holder["node"] for holder in hit["holders"]] == [b.node_id]


async def test_a_waiting_pin_is_served_by_a_holder_while_the_owner_stays_offline(
    network: Network, tmp_path: Path
) -> None:
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE)
    c = await network.node("gamma", store=STORE)
    await group(a, b, c)
    source = write_file(tmp_path, "Lecture.bin", secrets.token_bytes(1024 * 1024 + 5))
    item = (await a.add(source))[0]
    h = item["content_hash"]
    await c.sync()
    await pin_complete(c, item["id"])
    await b.sync()  # B learns that C holds a copy
    await a.stop()
    await c.stop()

    pin = await waiting_pin(b, item["id"])
    assert pin["error"] == "alpha is offline and the member holding a copy is too; retried on each sync"
    assert str((await b.sync())[a.node_id]).startswith("error")
    assert (await pins(b))[item["id"]]["state"] == "waiting"

    # C comes back, A does not: B's next sync round fetches the pin from C.
    await c.start()
    changed = await b.sync()
    assert str(changed[a.node_id]).startswith("error") and changed[c.node_id] == 0, changed

    async def complete() -> bool:
        return bool((await pins(b))[item["id"]]["state"] == "complete")

    await eventually(complete, what="B's waiting pin to complete from C")
    assert sha256(blob_path(b, h)) == sha256(source)
    assert (await traffic(b, f"peer:{c.node_id}"))["received"] == source.stat().st_size


async def test_the_pin_command_queues_a_pin_nobody_can_serve(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE)
    await group(a, b)
    item = (await a.add(write_file(tmp_path, "Radio Play.bin", secrets.token_bytes(300_000))))[0]
    await b.sync()
    await a.stop()

    # Without --wait: queued, exit 0.
    code, text = await run(b, "pin", item["id"])
    assert code == 0
    assert text == f"{item['id']}  waiting  0%  Radio Play\nqueued: alpha is offline; retried on each sync\n"
    # With --wait: it does not wait for A; one line says the pin is kept, and the command fails (exit 1).
    error, text = await run_failing(b, "pin", item["id"], "--wait")
    assert text == f"{item['id']}  waiting  0%  Radio Play\n"
    assert error.code == "pin_waiting"
    assert error.message == "pin recorded but not started: alpha is offline; retried on each sync"
    code, text = await run(b, "pins")
    header, row = text.splitlines()
    assert header.split() == ["ID", "STATE", "PROGRESS", "SIZE", "TITLE", "NOTE"]
    assert row.split("  ")[0] == item["id"] and "  waiting  " in row
    assert row.endswith("alpha is offline; retried on each sync")

    # A is back: --wait now follows the fetch to the end.
    await a.start()
    await b.sync()
    code, text = await run(b, "pin", item["id"], "--wait")
    assert (code, text) == (0, f"{item['id']}  complete  100%  Radio Play\n")
    code, text = await run(b, "pins")
    assert text.splitlines()[1].rstrip().endswith("Radio Play")


async def test_only_an_item_this_node_may_see_is_queued_and_a_queued_pin_can_be_dropped(
    network: Network, tmp_path: Path
) -> None:
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store={**STORE, "pin_budget": 1024 * 1024})
    await group(a, b)
    private = (await a.add(write_file(tmp_path, "Diary.txt"), visibility="private"))[0]
    shared = (await a.add(write_file(tmp_path, "Shared.txt")))[0]
    huge = (await a.add(write_file(tmp_path, "Huge.bin", secrets.token_bytes(1024 * 1024 + 1))))[0]
    await b.sync()
    await a.stop()
    # Unknown to B, or not B's to see: the same 404 as ever, nothing recorded.
    for item_id in (private["id"], "b" * 26):
        reply = await b.call("POST", "/api/v1/pins", json={"id": item_id})
        assert (reply.status, reply.data["error"]["code"]) == (404, "not_found"), reply
        assert f"no item {item_id}" in reply.message
    # Larger than B's whole pin budget: refused at once, owner online or not.
    reply = await b.call("POST", "/api/v1/pins", json={"id": huge["id"]})
    assert (reply.status, reply.data["error"]["code"]) == (507, "insufficient_storage"), reply
    assert await pins(b) == {}

    # A queued pin is dropped like any other.
    await waiting_pin(b, shared["id"])
    assert (await b.api("DELETE", f"/api/v1/pins/{shared['id']}")) == {"unpinned": shared["id"]}
    assert await pins(b) == {}
    assert not part_path(b, shared["content_hash"]).exists()
