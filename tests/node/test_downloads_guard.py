"""Private addresses stay refused on every connection yt-dlp makes, not only for the queued URL.

Tests normally allow private addresses (every fake is on loopback). Here the
queue refuses them, except for one address standing for "the internet":
127.0.0.2, through the queue's allowed networks (what a user would set to
reach a NAS). The site there is reachable; what it sends yt-dlp on to, on
127.0.0.1 or ``localhost``, must not be. The same downloads with 127.0.0.1
allowed too succeed, so the refusals come from the guard and nothing else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from node.blobs import BlobStore
from node.downloads import EGRESS_GUARD, AddressPolicy, Downloads, RefusedAddress
from node.service import ContentManager
from node.store import CmaStore
from priv_network import db
from priv_network.identity import NodeIdentity
from tests.media import make_video
from tests.node.test_downloads import FINAL, FakeSite, wait_for

OUTSIDE = "127.0.0.2"  # stands for a public address in these tests


@dataclass
class Stack:
    cma: ContentManager
    store: CmaStore
    blobs: BlobStore


@pytest.fixture
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """A CMA of its own (no node, so no other download queue picks up the rows)."""
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    executor = ThreadPoolExecutor(max_workers=2)
    store = CmaStore(engine)
    blobs = BlobStore(tmp_path / "store", 1 << 20, 0)
    cma = ContentManager(
        store=store,
        blobs=blobs,
        executor=executor,
        node_id=NodeIdentity.generate().node_id,
        node_name="alice",
        node_url="http://127.0.0.1:1",
        hash_workers=1,
    )
    await cma.start()
    try:
        yield Stack(cma=cma, store=store, blobs=blobs)
    finally:
        executor.shutdown(wait=True)
        await engine.dispose()


@pytest.fixture
async def inside(tmp_path: Path) -> AsyncIterator[FakeSite]:
    """The site on the LAN (127.0.0.1): it has the video, and must not be reached."""
    site = FakeSite(video=make_video(tmp_path / "garden.mp4", seconds=1))
    site.server = TestServer(site.app(), host="127.0.0.1")
    await site.server.start_server()
    yield site
    await site.server.close()


@dataclass
class Outside:
    """The site "on the internet" (127.0.0.2): a redirect and a page, both leading inside."""

    server: TestServer
    requests: list[str]

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def outside(inside: FakeSite) -> AsyncIterator[Outside]:
    requests: list[str] = []
    clip = inside.url("/media/Garden%20Party.mp4")
    by_name = clip.replace("127.0.0.1", "localhost")  # a name that resolves to loopback when yt-dlp fetches

    async def hop(request: web.Request) -> web.Response:
        requests.append(request.path)
        raise web.HTTPFound(clip)

    async def page(request: web.Request) -> web.Response:
        requests.append(request.path)
        html = f'<!doctype html><title>Evening</title><video controls src="{by_name}"></video>'
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/hop.mp4", hop)
    app.router.add_get("/page.html", page)
    server = TestServer(app, host=OUTSIDE)
    await server.start_server()
    yield Outside(server=server, requests=requests)
    await server.close()


QueueFactory = Callable[..., Any]


@pytest.fixture
async def queue(stack: Stack) -> AsyncIterator[QueueFactory]:
    started: list[Downloads] = []

    async def make(*allowed: str) -> Downloads:
        downloads = Downloads(
            store=stack.store,
            blobs=stack.blobs,
            cma=stack.cma,
            workers=1,
            allow_private=False,
            max_filesize=0,
            socket_timeout=10,
            allowed_networks=allowed,
        )
        await downloads.start()
        started.append(downloads)
        return downloads

    yield make
    for downloads in started:
        await downloads.stop()


async def settle(downloads: Downloads, url: str) -> dict[str, Any]:
    row, created = await downloads.add(url, "admin", "private")
    assert created
    final: dict[str, Any] = {}

    async def done() -> bool:
        final.update(await downloads.get(row["id"]))
        return final["state"] in FINAL

    await wait_for(done, f"the download of {url}")
    return final


async def test_a_redirect_to_a_private_address_is_refused(
    queue: QueueFactory, outside: Outside, inside: FakeSite
) -> None:
    refusing = await queue(f"{OUTSIDE}/32")
    row = await settle(refusing, outside.url("/hop.mp4"))  # queued: its address is allowed
    assert row["state"] == "error", row
    assert row["message"] == (
        "refused to connect to 127.0.0.1: a private or local address ([downloads] allow_private is off)"
    )
    assert outside.requests  # the first hop was reached...
    assert inside.requests == []  # ...and not the address it redirected to
    await refusing.stop()

    allowing = await queue(f"{OUTSIDE}/32", "127.0.0.1/32")  # the control: same redirect, allowed
    assert (await settle(allowing, outside.url("/hop.mp4")))["state"] == "downloaded"
    assert inside.fetches("/media/Garden Party.mp4")


async def test_a_page_naming_a_local_media_url_is_refused(
    queue: QueueFactory, outside: Outside, inside: FakeSite
) -> None:
    """The page names http://localhost:PORT/...: a name resolved when yt-dlp fetches it, to loopback."""
    refusing = await queue(f"{OUTSIDE}/32")
    row = await settle(refusing, outside.url("/page.html"))
    assert row["state"] == "error", row
    assert "private or local address" in row["message"]
    assert "127.0.0.1" in row["message"] or "::1" in row["message"]
    assert outside.requests == ["/page.html"]
    assert inside.requests == []
    await refusing.stop()

    allowing = await queue(f"{OUTSIDE}/32", "127.0.0.0/8", "::1/128")
    assert (await settle(allowing, outside.url("/page.html")))["state"] == "downloaded"
    assert inside.requests


async def test_the_queue_check_uses_the_same_policy(queue: QueueFactory, inside: FakeSite) -> None:
    refusing = await queue(f"{OUTSIDE}/32")
    with pytest.raises(Exception, match="private or local address") as error:
        await refusing.add(inside.url("/media/Garden%20Party.mp4"), "admin", "private")
    assert getattr(error.value, "status", None) == 403
    assert inside.requests == []


def _guarded(policy: AddressPolicy, action: Callable[[], Any]) -> Any:
    with EGRESS_GUARD.guarding(policy):
        return action()


async def test_the_guard_checks_the_dialled_address_in_its_own_thread_only(inside: FakeSite) -> None:
    assert inside.server is not None
    port = inside.server.port
    assert port is not None
    refusing = AddressPolicy(allow_private=False)
    loop = asyncio.get_running_loop()

    def connect(host: str) -> None:
        socket.create_connection((host, port), timeout=5).close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        for host in ("127.0.0.1", "localhost"):  # a literal, and a name resolved to loopback
            with pytest.raises(RefusedAddress, match="private or local address"):
                await loop.run_in_executor(pool, _guarded, refusing, lambda h=host: connect(h))
        # The same thread, once its download is over; and any other thread meanwhile.
        await loop.run_in_executor(pool, connect, "127.0.0.1")
        await loop.run_in_executor(pool, _guarded, AddressPolicy(allow_private=True), lambda: connect("127.0.0.1"))
        allowed = AddressPolicy(allow_private=False, allowed=(ipaddress.ip_network("127.0.0.0/8"),))
        await loop.run_in_executor(pool, _guarded, allowed, lambda: connect("127.0.0.1"))

        # An external program handed a URL would connect out of sight: refused; one without is fine.
        def spawn(*args: str) -> int:
            return subprocess.run([sys.executable, "-c", "pass", *args], check=False).returncode

        with pytest.raises(RefusedAddress, match="external program"):
            await loop.run_in_executor(pool, _guarded, refusing, lambda: spawn("http://example.com/a.m3u8"))
        assert await loop.run_in_executor(pool, _guarded, refusing, lambda: spawn("file:/tmp/a.mp4")) == 0


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.1.20", True),
        ("169.254.169.254", True),  # cloud metadata
        ("fe80::1%eth0", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("example.com", True),  # a name cannot be checked: the guard only ever sees addresses
        ("93.184.215.14", False),
        ("2606:4700::6810:84e5", False),
    ],
)
def test_address_policy(host: str, refused: bool) -> None:
    assert AddressPolicy(allow_private=False).refuses(host) is refused
    assert AddressPolicy(allow_private=True).refuses(host) is False


def test_allowed_networks() -> None:
    policy = AddressPolicy(allow_private=False, allowed=(ipaddress.ip_network("192.168.1.0/24"),))
    assert not policy.refuses("192.168.1.20")
    assert not policy.refuses("::ffff:192.168.1.20")
    assert policy.refuses("192.168.2.20")
