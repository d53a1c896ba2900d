"""Peers that serve wrong bytes: a member never passes on a byte it cannot verify.

The malicious owner is a real node A whose stored blob is changed on disk
after ingest: A then serves wrong bytes under valid signatures, while its
signed catalog and manifest still describe the original. B's broker checks
every block before sending any of it, so B's client gets a response cut
short (never a wrong byte), and A is penalized and named in B's log. A
stalled or short peer is a raw socket server in A's place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.network.conftest import NetNode, Network, eventually, group, write_file

BS = 64 * 1024
STORE = {"block_size": BS}
SIZE = 3 * 1024 * 1024 + 777
BAD_BLOCK = 20
BAD_OFFSET = BAD_BLOCK * BS + 1234


@dataclass
class Got:
    """What a client received: the status (None if the connection died before it), the bytes, the error."""

    status: int | None
    length: int | None
    body: bytes
    error: BaseException | None


async def fetch(node: NetNode, item_id: str, headers: dict[str, str] | None = None) -> Got:
    body = bytearray()
    status = length = None
    try:
        async with node.session.get(
            f"{node.url}/api/v1/items/{item_id}/content", headers={**node.auth, **(headers or {})}
        ) as resp:
            status = resp.status
            length = resp.content_length
            async for chunk in resp.content.iter_chunked(BS):
                body += chunk
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        return Got(status, length, bytes(body), exc)
    return Got(status, length, bytes(body), None)


def assert_cut(got: Got, data: bytes, start: int, stop: int, *, bad_at: int) -> None:
    """Cut short, and every byte received before the cut is the source's; nothing from the bad block."""
    assert got.error is not None, f"not cut: {got.status}, {len(got.body)} bytes"
    assert got.status in (None, 200 if (start, stop) == (0, len(data)) else 206)
    if got.length is not None:
        assert got.length == stop - start
    assert len(got.body) < stop - start
    assert got.body == data[start : start + len(got.body)], "a wrong byte reached the client"
    assert start + len(got.body) <= bad_at, "bytes of the bad block reached the client"


def blob_path(node: NetNode, content_hash: str) -> Path:
    return node.config.store_path / "blobs" / content_hash[:2] / content_hash[2:4] / content_hash


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        old = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([old[0] ^ 0xFF]))


def transfer_logs(caplog: pytest.LogCaptureFixture, node_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "registry.transfer" and r.levelno >= logging.WARNING and node_id in r.getMessage()
    ]


async def pins(node: NetNode) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in (await node.api("GET", "/api/v1/pins"))["pins"]}


@pytest.fixture
async def tampered(network: Network, tmp_path: Path) -> tuple[NetNode, NetNode, dict[str, Any], bytes]:
    """A and B in one group; A's item is then changed on A's disk, one byte in block 20."""
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE)
    await group(a, b)
    data = secrets.token_bytes(SIZE)
    item = (await a.add(write_file(tmp_path, "Target.bin", data)))[0]
    await b.sync()
    flip_byte(blob_path(a, item["content_hash"]), BAD_OFFSET)
    return a, b, item, data


async def test_tampered_owner_never_delivers_a_wrong_byte(
    tampered: tuple[NetNode, NetNode, dict[str, Any], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    a, b, item, data = tampered
    bad_at = BAD_BLOCK * BS
    assert (await b.peers())[a.node_id]["failures"] == 0

    # The whole file: the good blocks before the bad one, then the cut.
    got = await fetch(b, item["id"])
    assert_cut(got, data, 0, SIZE, bad_at=bad_at)

    # A range covering the bad block, and one starting in it.
    start, stop = BAD_OFFSET - 200_000, BAD_OFFSET + 200_000
    got = await fetch(b, item["id"], {"Range": f"bytes={start}-{stop - 1}"})
    assert_cut(got, data, start, stop, bad_at=bad_at)
    # Starting in the bad block: nothing was sent yet, so the answer is a plain error, not a broken 206.
    got = await fetch(b, item["id"], {"Range": f"bytes={bad_at + 10}-"})
    assert (got.status, got.error) == (502, None), got
    assert json.loads(got.body)["error"]["message"] == f"alpha sent a corrupt block {BAD_BLOCK} of {item['id']}"

    # Ranges that avoid the bad block are served whole and right (A is still the only source).
    for header, lo, hi in (("bytes=0-99999", 0, 100_000), (f"bytes={bad_at + BS}-", bad_at + BS, SIZE)):
        got = await fetch(b, item["id"], {"Range": header})
        assert (got.status, got.error, got.body) == (206, None, data[lo:hi]), header

    # A is penalized: its failures count, the reason names the block, its feed rows are marked offline.
    peer = (await b.peers())[a.node_id]
    assert peer["failures"] >= 3, peer
    assert peer["online"] is False
    assert re.search(r"corrupt block \d+ of " + item["id"], peer["last_error"]), peer["last_error"]
    # B's log names A, the item and the block.
    logged = transfer_logs(caplog, a.node_id)
    assert any(f"block {BAD_BLOCK} of {item['id']} from {a.node_id} does not match" in m for m in logged), logged


async def test_truncated_owner_blob_is_refused_not_a_short_file(
    tampered: tuple[NetNode, NetNode, dict[str, Any], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A blob cut short on A's disk: A answers with another length, which B refuses before any header."""
    a, b, item, _data = tampered
    path = blob_path(a, item["content_hash"])
    with path.open("r+b") as fh:
        fh.truncate(SIZE // 2)

    for header in (None, f"bytes={SIZE // 2 - 100}-", f"bytes=-{SIZE // 4}"):
        got = await fetch(b, item["id"], {"Range": header} if header else None)
        # Never a 200/206 with fewer bytes than it announced.
        if got.status in (200, 206):
            assert got.error is not None and got.body == b"", (header, got)
        else:
            assert got.status == 502, (header, got)
            assert got.error is None
    peer = (await b.peers())[a.node_id]
    assert peer["failures"] >= 1
    assert "wrong range" in peer["last_error"]
    # Even a range A still has is refused: A now states another total length for the item.
    got = await fetch(b, item["id"], {"Range": "bytes=1000-99999"})
    assert got.status == 502
    assert got.body.startswith(b'{"error"')


async def test_pin_from_a_tampered_owner_never_completes(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha", store=STORE)
    c = await network.node("gamma", store=STORE)
    await group(a, c)
    data = secrets.token_bytes(SIZE)
    item = (await a.add(write_file(tmp_path, "Target.bin", data)))[0]
    h = item["content_hash"]
    await c.sync()
    flip_byte(blob_path(a, h), BAD_OFFSET)
    part = c.config.store_path / "pins" / f"{h}.part"

    async def paused() -> bool:
        pin = (await pins(c))[item["id"]]
        assert pin["state"] != "complete", pin
        return bool(pin["state"] == "paused")

    reply = await c.call("POST", "/api/v1/pins", json={"id": item["id"]})
    assert reply.status == 202, reply
    await eventually(paused, what="the pin from a tampered owner to stop")
    for attempt in ("sync", "pin again"):
        pin = (await pins(c))[item["id"]]
        assert pin["error"] == f"alpha sent a corrupt block {BAD_BLOCK}; retried on each sync", (attempt, pin)
        assert pin["verified_bytes"] == BAD_BLOCK * BS
        # Only the verified blocks are kept, apart from the store; nothing under blobs/.
        assert part.read_bytes() == data[: BAD_BLOCK * BS]
        assert not blob_path(c, h).exists()
        assert not any(p.is_file() for p in (c.config.store_path / "blobs").rglob("*"))
        assert (await c.peers())[a.node_id]["failures"] >= 1
        # Trying again (a sync resumes pins of online owners; or asking again) ends the same way.
        if attempt == "sync":
            await c.sync()
        else:
            await c.call("POST", "/api/v1/pins", json={"id": item["id"]})
        await eventually(paused, what=f"the pin to stop again after {attempt}")
    # C's user still cannot watch a wrong byte: C streams through its broker, cut at the bad block.
    got = await fetch(c, item["id"])
    assert_cut(got, data, 0, SIZE, bad_at=BAD_BLOCK * BS)


async def test_tampered_holder_is_cut_and_penalized(
    network: Network, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A member's pinned copy is checked like the owner's bytes: C's tampered copy is cut off."""
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE)
    c = await network.node("gamma", store=STORE)
    await group(a, b, c)
    data = secrets.token_bytes(SIZE)
    item = (await a.add(write_file(tmp_path, "Target.bin", data)))[0]
    await c.sync()
    assert (await c.call("POST", "/api/v1/pins", json={"id": item["id"]})).status == 202

    async def pinned() -> bool:
        return bool((await pins(c))[item["id"]]["state"] == "complete")

    await eventually(pinned, what="C's pin to complete")
    await b.sync()
    flip_byte(blob_path(c, item["content_hash"]), BAD_OFFSET)
    await a.stop()

    got = await fetch(b, item["id"])
    assert_cut(got, data, 0, SIZE, bad_at=BAD_BLOCK * BS)
    assert (await b.peers())[c.node_id]["failures"] >= 1
    assert "corrupt block" in (await b.peers())[c.node_id]["last_error"]
    assert transfer_logs(caplog, c.node_id)


@dataclass
class FakePeer:
    """A raw HTTP server in A's place: answers a content request with the right headers and the
    first ``blocks`` blocks, then either stalls (until the test ends) or closes the connection."""

    data: bytes
    blocks: int
    stall: bool
    release: asyncio.Event
    requests: list[str]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            self.requests.append(head.split("\r\n", 1)[0])
            rng = re.search(r"\r\nrange: bytes=(\d+)-(\d+)\r\n", head, re.IGNORECASE)
            if not head.startswith("GET /federation/v1/content/") or rng is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            start, last = int(rng.group(1)), int(rng.group(2))
            writer.write(
                (
                    "HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Length: {last - start + 1}\r\n"
                    f"Content-Range: bytes {start}-{last}/{len(self.data)}\r\n\r\n"
                ).encode()
            )
            writer.write(self.data[start : start + self.blocks * BS])
            await writer.drain()
            if self.stall:
                await self.release.wait()
        finally:
            writer.close()


@pytest.fixture
async def impersonate() -> AsyncIterator[Callable[[NetNode, bytes, bool], Awaitable[FakePeer]]]:
    servers: list[tuple[asyncio.Server, FakePeer]] = []

    async def start(node: NetNode, data: bytes, stall: bool) -> FakePeer:
        assert node.server is None, "stop the real node first"
        fake = FakePeer(data=data, blocks=2, stall=stall, release=asyncio.Event(), requests=[])
        server = await asyncio.start_server(fake.handle, node.host, node.port)
        servers.append((server, fake))
        return fake

    yield start
    for server, fake in servers:
        fake.release.set()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("stall", [True, False], ids=["stalled", "short"])
async def test_stalled_or_short_peer_is_cut(
    network: Network,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    impersonate: Callable[[NetNode, bytes, bool], Awaitable[FakePeer]],
    stall: bool,
) -> None:
    """A peer that sends good headers and two good blocks, then stalls (B's read timeout, 2s, ends it)
    or closes early: B's client gets those two blocks and a cut, never a silently short body."""
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE, sync={"interval": "1h", "timeout": "2s"})
    await group(a, b)
    data = secrets.token_bytes(SIZE)
    item = (await a.add(write_file(tmp_path, "Target.bin", data)))[0]
    await b.sync()
    # B streams a little while A is real (B keeps A's verified manifest), then A is replaced.
    got = await fetch(b, item["id"], {"Range": "bytes=0-9"})
    assert (got.status, got.body) == (206, data[:10])
    await a.stop()
    fake = await impersonate(a, data, stall)

    got = await fetch(b, item["id"])
    assert fake.requests == [f"GET /federation/v1/content/{item['id']} HTTP/1.1"]
    assert got.status == 200
    assert got.error is not None
    assert got.body == data[: len(got.body)]
    assert len(got.body) <= 2 * BS
    peer = (await b.peers())[a.node_id]
    assert peer["failures"] >= 1
    assert f"stopped sending {item['id']} at block 2" in peer["last_error"], peer["last_error"]
    assert any("cut at block 2" in m for m in transfer_logs(caplog, a.node_id))
