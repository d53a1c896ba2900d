"""Brokered streaming between real nodes: a member watches a peer's item through its own node.

B asks its own admin API for A's item; B's broker fetches whole blocks from A
(signed, with HTTP Range), checks each against A's manifest and passes the
requested bytes on. When A is down, a member holding a verified pinned copy
(C) serves the same bytes, still checked against A's manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import secrets
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from priv_network.server import create_app
from priv_network.signing import Signer
from tests.media import make_video
from tests.network.conftest import NetNode, Network, eventually, group, signed_request, write_file

BS = 64 * 1024
STORE = {"block_size": BS}


async def content(
    node: NetNode, item_id: str, headers: dict[str, str] | None = None, *, method: str = "GET"
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with node.session.request(
        method, f"{node.url}/api/v1/items/{item_id}/content", headers={**node.auth, **(headers or {})}
    ) as resp:
        return resp.status, resp.headers, await resp.read()


def random_ranges(rnd: random.Random, size: int, n: int) -> list[tuple[str, int, int]]:
    """``n`` (Range header, start, stop) triples: closed, open-ended and suffix ranges, plus block edges."""
    assert size > 2 * BS + 10
    out = [
        ("bytes=0-0", 0, 1),
        (f"bytes={size - 1}-{size - 1}", size - 1, size),
        (f"bytes={BS - 1}-{BS}", BS - 1, BS + 1),  # straddles the first block boundary
        (f"bytes={BS}-{2 * BS - 1}", BS, 2 * BS),  # exactly one whole block
        (f"bytes={size - 10}-{size + 10_000}", size - 10, size),  # last past the end: clamped
        (f"bytes=-{size + 5}", 0, size),  # suffix longer than the file
    ]
    for i in range(n):
        start = rnd.randrange(size)
        if i % 3 == 0:
            stop = min(size, start + rnd.randrange(1, 6 * BS))
            out.append((f"bytes={start}-{stop - 1}", start, stop))
        elif i % 3 == 1:
            out.append((f"bytes={start}-", start, size))
        else:
            n_last = rnd.randrange(1, 4 * BS)
            out.append((f"bytes=-{n_last}", max(0, size - n_last), size))
    return out


async def check_ranges(node: NetNode, item: dict[str, Any], data: bytes, ranges: list[tuple[str, int, int]]) -> None:
    size = len(data)
    for header, start, stop in ranges:
        status, headers, body = await content(node, item["id"], {"Range": header})
        assert status == 206, (header, status, body[:200])
        assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}", header
        assert int(headers["Content-Length"]) == stop - start, header
        assert headers["ETag"] == f'"{item["content_hash"]}"', header
        assert headers["Accept-Ranges"] == "bytes"
        assert body == data[start:stop], f"{header}: wrong bytes"


async def traffic(node: NetNode) -> dict[str, dict[str, int]]:
    return dict((await node.api("GET", "/api/v1/status"))["traffic"])


async def test_member_streams_a_peers_item_with_ranges(
    network: Network, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE)
    await group(a, b)

    video_path = make_video(tmp_path / "Holiday Film.mp4", seconds=4, width=320, height=240)
    video_data = video_path.read_bytes()
    binary = secrets.token_bytes(3 * 1024 * 1024 + 12_345)  # many 64 KiB blocks, a short last one
    video = (await a.add(video_path))[0]
    blob = (await a.add(write_file(tmp_path, "Random Data.bin", binary)))[0]
    private = (await a.add(write_file(tmp_path, "Private Diary.txt"), visibility="private"))[0]
    assert video["has_poster"] and video["kind"] == "video"
    await b.sync()

    # Metadata of A's item through B: A is its owner.
    meta = await b.api("GET", f"/api/v1/items/{blob['id']}")
    assert (meta["id"], meta["node"], meta["size"], meta["content_hash"]) == (
        blob["id"],
        a.node_id,
        len(binary),
        blob["content_hash"],
    )
    assert meta["content_url"] == f"/api/v1/items/{blob['id']}/content"

    # The whole files, byte for byte.
    status, headers, body = await content(b, video["id"])
    assert status == 200
    assert body == video_data
    assert headers["Content-Type"] == "video/mp4"
    assert int(headers["Content-Length"]) == len(video_data)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"] == f'"{video["content_hash"]}"'
    assert "Content-Range" not in headers
    status, headers, body = await content(b, blob["id"])
    assert status == 200
    assert body == binary

    # HEAD: the same headers, no body.
    status, headers, body = await content(b, blob["id"], method="HEAD")
    assert (status, int(headers["Content-Length"]), body) == (200, len(binary), b"")

    # 50+ random ranges over the binary, a few over the video.
    rnd = random.Random(20240611)
    await check_ranges(b, blob, binary, random_ranges(rnd, len(binary), 54))
    await check_ranges(b, video, video_data, random_ranges(rnd, len(video_data), 6))

    # A range that starts at or past the end: 416, as JSON under /api.
    for header in (f"bytes={len(binary)}-", f"bytes={len(binary) + 100}-{len(binary) + 200}", "bytes=-0"):
        status, headers, body = await content(b, blob["id"], {"Range": header})
        assert status == 416, header
        assert headers["Content-Range"] == f"bytes */{len(binary)}", header
        assert json.loads(body)["error"]["code"] == "range_not_satisfiable"

    # Malformed, multiple or foreign-unit ranges are ignored: the whole file with 200.
    for header in (
        "bytes=abc",
        "bytes=10-5",
        "bytes=0-1,10-20",
        "items=0-10",
        "bytes=",
        "bytes = 0-9",
        "bytes=\u0661-\u0662",
    ):
        for node in (b, a):  # brokered, and the owner's own local file
            status, headers, body = await content(node, blob["id"], {"Range": header})
            assert status == 200, (node.name, header)
            assert "Content-Range" not in headers, (node.name, header)
            assert body == binary, (node.name, header)

    # If-Range: the current ETag honours the range, a stale one sends everything.
    etag = f'"{blob["content_hash"]}"'
    status, headers, body = await content(b, blob["id"], {"Range": "bytes=100000-200000", "If-Range": etag})
    assert (status, body) == (206, binary[100000:200001])
    assert headers["Content-Range"] == f"bytes 100000-200000/{len(binary)}"
    status, headers, body = await content(b, blob["id"], {"Range": "bytes=100000-200000", "If-Range": '"stale"'})
    assert (status, body) == (200, binary)
    assert "Content-Range" not in headers

    # The item's URL is revalidated (its owner may replace the file in place);
    # a matching If-None-Match costs a 304 and no bytes, a stale one the file.
    assert headers["Cache-Control"] == "private, no-cache"
    status, headers, body = await content(b, blob["id"], {"If-None-Match": etag})
    assert (status, headers["ETag"], body) == (304, etag, b"")
    status, headers, body = await content(b, blob["id"], {"If-None-Match": '"stale"'})
    assert (status, body) == (200, binary)

    # The poster through B is A's poster.
    async with a.session.get(f"{a.url}/api/v1/items/{video['id']}/poster", headers=a.auth) as resp:
        assert resp.status == 200
        own_poster = await resp.read()
    async with b.session.get(f"{b.url}/api/v1/items/{video['id']}/poster", headers=b.auth) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert await resp.read() == own_poster
    assert own_poster.startswith(b"\xff\xd8")
    # The binary has none.
    assert (await b.call("GET", f"/api/v1/items/{blob['id']}/poster")).status == 404

    # A private item of A does not exist for B: not through B's API, nor asking A directly.
    for path in (f"/api/v1/items/{private['id']}", f"/api/v1/items/{private['id']}/content"):
        reply = await b.call("GET", path)
        assert reply.status == 404, path
        assert private["id"] in reply.message
    for path in (f"/federation/v1/content/{private['id']}", f"/federation/v1/manifest/{private['id']}"):
        status, raw = await signed_request(a.session, b.identity, "GET", a.url + path)
        assert status == 404, path
        assert json.loads(raw)["error"]["code"] == "not_found"
    # ... while the same signed request for a network item is answered.
    status, raw = await signed_request(
        a.session, b.identity, "GET", f"{a.url}/federation/v1/content/{blob['id']}", headers=None
    )
    assert (status, raw) == (200, binary)

    # Traffic is counted on both sides, for the peer by name, and the two sides agree
    # (A also counts the request above, signed as B but not made by B's node).
    async def counted() -> bool:
        sent = (await traffic(a)).get(f"peer:{b.node_id}", {}).get("sent", 0)
        received = (await traffic(b)).get(f"peer:{a.node_id}", {}).get("received", 0)
        return sent == received + len(binary) and received > 0

    await eventually(counted, what="A's sent and B's received bytes to agree")
    assert (await traffic(b))[f"peer:{a.node_id}"]["received"] >= 3 * len(binary)
    assert (await traffic(b))[f"peer:{a.node_id}"]["sent"] == 0
    assert (await traffic(a))[f"peer:{b.node_id}"]["received"] == 0

    # Nothing on the way logged an error (a response sent twice, a crashed handler).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_large_item_streams_in_chunks(network: Network, tmp_path: Path) -> None:
    """An 8 MiB item is read chunk by chunk (never held whole) and hashes like the source."""
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE)
    await group(a, b)
    source = write_file(tmp_path, "Big.bin", secrets.token_bytes(8 * 1024 * 1024 + 7))
    item = (await a.add(source))[0]
    await b.sync()

    digest, total, chunks = hashlib.sha256(), 0, 0
    async with b.session.get(f"{b.url}/api/v1/items/{item['id']}/content", headers=b.auth) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == source.stat().st_size
        async for chunk in resp.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            total += len(chunk)
            chunks += 1
    assert total == source.stat().st_size
    assert chunks > 1
    assert digest.hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()


async def test_a_holder_serves_when_the_owner_is_down(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE)
    c = await network.node("gamma", store=STORE)
    await group(a, b, c)
    binary = secrets.token_bytes(3 * 1024 * 1024 + 999)
    item = (await a.add(write_file(tmp_path, "Shared Film.bin", binary)))[0]
    for node in (b, c):
        await node.sync()

    # C pins A's item and waits until its copy is complete.
    pin = await c.api("POST", "/api/v1/pins", json={"id": item["id"]})
    assert (pin["id"], pin["node"], pin["size"]) == (item["id"], a.node_id, len(binary))
    assert pin["state"] in ("fetching", "complete")

    async def pinned() -> bool:
        pins = (await c.api("GET", "/api/v1/pins"))["pins"]
        return [(p["id"], p["state"]) for p in pins] == [(item["id"], "complete")]

    await eventually(pinned, what="C's pin to complete")

    # After a sync, B's search names C as a holder of A's item.
    await b.sync()
    [hit] = await b.search("shared film")
    assert (hit["id"], hit["node"]) == (item["id"], a.node_id)
    assert [(h["node"], h["name"], h["online"]) for h in hit["holders"]] == [(c.node_id, "gamma", True)]

    # A goes down, and B restarts (so it has no cached manifest): C serves the bytes,
    # and B checks its copy of the manifest against the hash in A's signed entry.
    await a.stop()
    await b.restart()
    status, _headers, body = await content(b, item["id"])
    assert (status, body) == (200, binary)
    rnd = random.Random(7)
    await check_ranges(b, item, binary, random_ranges(rnd, len(binary), 20))

    # Once B's sync marks A offline, C is asked first; the bytes are the same.
    changed = await b.sync()
    assert str(changed[a.node_id]).startswith("error"), changed
    [hit] = await b.search("shared film")
    assert hit["online"] is False
    await check_ranges(b, item, binary, random_ranges(rnd, len(binary), 10))

    async def c_served_b() -> bool:
        sent_by_c = (await traffic(c)).get(f"peer:{b.node_id}", {}).get("sent", 0)
        return sent_by_c == (await traffic(b)).get(f"peer:{c.node_id}", {}).get("received", 0) > len(binary)

    await eventually(c_served_b, what="C's sent and B's received bytes to agree")

    # C plays its own copy locally (A is still down): whole and ranged, nothing fetched again.
    received_from_a = (await traffic(c))[f"peer:{a.node_id}"]["received"]
    assert received_from_a == len(binary)  # the pin fetched each byte once
    status, _headers, body = await content(c, item["id"])
    assert (status, body) == (200, binary)
    status, headers, body = await content(c, item["id"], {"Range": "bytes=1000000-1999999"})
    assert (status, body) == (206, binary[1000000:2000000])
    assert headers["Content-Range"] == f"bytes 1000000-1999999/{len(binary)}"
    assert (await traffic(c))[f"peer:{a.node_id}"]["received"] == received_from_a


async def hang_up(url: str, headers: dict[str, str], *, method: str = "GET", read: int = 256 * 1024) -> int:
    """A client that hangs up mid-body, as a player does when it seeks or closes: ``read`` bytes of
    the body, then the connection is reset. A raw socket with a small receive buffer, so that the
    server is still sending when it goes. Returns the response's status."""
    url_ = URL(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url_.host, url_.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        head = [f"{method} {url_.raw_path_qs} HTTP/1.1", f"Host: {url_.host}:{url_.port}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        status = int((await reader.readline()).split()[1])
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        await reader.readexactly(read)
    finally:
        # Closed with unread bytes, and no lingering: the server gets a reset.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
    return status


def server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Records a client's hang-up must not cause: errors, and tracebacks at any level."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@contextlib.asynccontextmanager
async def served_like_serve(node: NetNode) -> AsyncIterator[None]:
    """Run ``node`` as `priv-network serve` does (web.run_app): a handler whose client has gone runs
    on to its end. (aiohttp's TestServer cancels it instead, which would hide what happens then.)"""
    await node.stop()
    runner = web.AppRunner(create_app(node.config, node.identity), handler_cancellation=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, node.host, node.port).start()
        yield
    finally:
        await runner.cleanup()


@pytest.fixture
async def long_item(network: Network, tmp_path: Path) -> AsyncIterator[tuple[NetNode, NetNode, str, int]]:
    """A (served as `serve` does) and B in one group; A's item is larger than the socket buffers
    hold, so that A is still sending when a client hangs up. Yields A, B, the item's federation URL
    on A, and its size."""
    a = await network.node("alpha", store=STORE)
    b = await network.node("beta", store=STORE)
    await group(a, b)
    size = 24 * 1024 * 1024
    item = (await a.add(write_file(tmp_path, "Long Film.bin", secrets.token_bytes(size))))[0]
    async with served_like_serve(a):
        yield a, b, f"{a.url}/federation/v1/content/{item['id']}", size


async def sent_to(a: NetNode, b: NetNode) -> int:
    return int((await traffic(a)).get(f"peer:{b.node_id}", {}).get("sent", 0))


async def test_a_peer_that_hangs_up_is_counted_and_not_logged_as_an_error(
    long_item: tuple[NetNode, NetNode, str, int], caplog: pytest.LogCaptureFixture
) -> None:
    """A broker drops its upstream when its viewer seeks or closes: the owner counts what it sent,
    and logs no error (the acceptance run found a 50-line traceback per seek)."""
    a, b, url, size = long_item
    caplog.set_level(logging.DEBUG, logger="node.api")
    caplog.clear()
    for _ in range(3):
        assert await hang_up(url, Signer(b.identity).sign("GET", url, b"")) == 200

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "node.api"]

    # Each handler goes on after its hang-up, says so in one DEBUG line and counts what it had
    # sent (or, before the fix, the hang-up was logged as an error): wait for one or the other.
    async def settled() -> bool:
        return bool(server_errors(caplog)) or len(said()) == 3

    await eventually(settled, what="A to see the three hang-ups")
    assert server_errors(caplog) == []
    assert 3 * 256 * 1024 < await sent_to(a, b) < 3 * size
    lines = said()
    assert all("connection closed after " in line and f"of {size} bytes" in line for line in lines), lines
    # The hang-ups cost A nothing: the next request is served in full.
    status, body = await signed_request(a.session, b.identity, "GET", url, extra={"Range": "bytes=-5"})
    assert status == 206 and len(body) == 5


async def test_a_viewer_that_hangs_up_on_a_brokered_stream_is_not_an_error(
    long_item: tuple[NetNode, NetNode, str, int], caplog: pytest.LogCaptureFixture
) -> None:
    """A viewer on B seeks or closes the player: B logs no error or traceback, does not blame A
    (no "-> 502", no failure counted against A), and goes on serving."""
    a, b, url, size = long_item
    item_id = url.rsplit("/", 1)[1]
    await b.sync()
    caplog.set_level(logging.DEBUG, logger="registry.transfer")
    async with served_like_serve(b):
        caplog.clear()
        for _ in range(3):
            assert await hang_up(f"{b.url}/api/v1/items/{item_id}/content", b.auth) == 200

        def ended() -> list[str]:
            return [r.getMessage() for r in caplog.records if "ended early" in r.getMessage()]

        async def settled() -> bool:  # each of B's handlers has seen its viewer go, or failed loudly
            return bool(server_errors(caplog)) or len(ended()) == 3

        await eventually(settled, what="B to see the three hang-ups")
        assert server_errors(caplog) == []
        assert not [r.getMessage() for r in caplog.records if "-> 502" in r.getMessage()]
        assert (await b.peers())[a.node_id]["failures"] == 0
        status, headers, body = await content(b, item_id, {"Range": "bytes=-5"})
        assert (status, len(body), headers["Content-Range"]) == (206, 5, f"bytes {size - 5}-{size - 1}/{size}")


async def test_head_of_a_peers_content_counts_no_bytes(long_item: tuple[NetNode, NetNode, str, int]) -> None:
    a, b, url, _size = long_item
    for _ in range(3):
        status, body = await signed_request(a.session, b.identity, "HEAD", url)
        assert (status, body) == (200, b"")
    # A 10-byte range after the HEADs: once it is counted, the HEADs would be too.
    status, body = await signed_request(a.session, b.identity, "GET", url, extra={"Range": "bytes=0-9"})
    assert (status, len(body)) == (206, 10)

    async def counted() -> bool:
        return await sent_to(a, b) > 0

    await eventually(counted, what="the range to be counted")
    assert await sent_to(a, b) == 10
