"""The URL download queue: yt-dlp against a fake web site on 127.0.0.1.

The site is an aiohttp app on port 0 serving a real MP4 (tests/media.py), an
HTML page embedding it, a file that breaks mid-way while "broken", and a slow
file held at a gate so a test can act while a download is in flight.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from priv_network.server import create_app
from tests.conftest import NodeFactory, RunningNode, free_port
from tests.media import make_video

FINAL = ("downloaded", "error", "canceled")
PRIVATE_OK = {"allow_private": True, "socket_timeout": "10s"}


async def wait_for(condition: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 60) -> None:
    """Poll a condition with a bounded deadline (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class FakeSite:
    """A small web site; records every request it gets."""

    video: Path
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    broken: bool = True
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    at_gate: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    @property
    def data(self) -> bytes:
        return self.video.read_bytes()

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def fetches(self, path: str) -> list[str | None]:
        """The Range header of every GET of ``path`` (None: the whole file)."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]

    def app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests.append((request.method, request.path, request.headers.get("Range")))
            return await handler(request)

        app = web.Application(middlewares=[record])
        app.router.add_get("/media/Garden Party.mp4", self.clip)
        app.router.add_get("/page.html", self.page)
        app.router.add_get("/flaky.mp4", self.flaky)
        app.router.add_get("/slow.mp4", self.slow)
        return app

    async def clip(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self.video, headers={"Content-Type": "video/mp4"})

    async def page(self, request: web.Request) -> web.Response:
        html = (
            "<!doctype html><html><head><title>Summer Evening</title>"
            '<meta property="og:description" content="A walk in the garden."></head>'
            '<body><h1>Summer Evening</h1><video controls src="/media/Garden%20Party.mp4"></video></body></html>'
        )
        return web.Response(text=html, content_type="text/html")

    async def flaky(self, request: web.Request) -> web.StreamResponse:
        """While broken: promise the whole file, send half, hang up."""
        if not self.broken:
            return web.FileResponse(self.video, headers={"Content-Type": "video/mp4"})
        data = self.data
        resp = web.StreamResponse(headers={"Content-Type": "video/mp4", "Content-Length": str(len(data))})
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()
        return resp

    async def slow(self, request: web.Request) -> web.StreamResponse:
        """The first 16 KiB at once, the rest in small pieces once the gate opens; ranges as usual."""
        if request.headers.get("Range"):
            return web.FileResponse(self.video, headers={"Content-Type": "video/mp4"})
        data = self.data
        resp = web.StreamResponse(headers={"Content-Type": "video/mp4", "Content-Length": str(len(data))})
        await resp.prepare(request)
        await resp.write(data[:16384])
        self.at_gate.set()
        await self.gate.wait()
        for start in range(16384, len(data), 4096):
            await resp.write(data[start : start + 4096])
        await resp.write_eof()
        return resp


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[FakeSite]:
    video = make_video(tmp_path / "garden.mp4", seconds=3)
    fake = FakeSite(video=video)
    fake.server = TestServer(fake.app(), host="127.0.0.1")
    await fake.server.start_server()
    yield fake
    fake.gate.set()
    await fake.server.close()


async def post(node: RunningNode, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with node.client.post("/api/v1/downloads", json=body, headers=node.auth) as resp:
        return resp.status, await resp.json()


async def get(node: RunningNode, download_id: str) -> dict[str, Any]:
    return await node.api("GET", f"/api/v1/downloads/{download_id}")


async def settled(node: RunningNode, download_id: str, timeout: float = 90) -> dict[str, Any]:
    """Wait for the download to reach a final state, and return it."""
    last: dict[str, Any] = {}

    async def done() -> bool:
        last.update(await get(node, download_id))
        return last["state"] in FINAL

    await wait_for(done, f"download {download_id} to finish", timeout)
    return last


async def content(node: RunningNode, item_id: str) -> bytes:
    async with node.client.get(f"/api/v1/items/{item_id}/content", headers=node.auth) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_direct_file_is_downloaded_into_an_item(node_factory: NodeFactory, site: FakeSite) -> None:
    node = await node_factory(downloads=PRIVATE_OK)
    url = site.url("/media/Garden%20Party.mp4")
    status, row = await post(node, {"url": url, "visibility": "network"})
    assert status == 201
    assert row["state"] in ("pending", "processing")
    assert row["url"] == url
    row = await settled(node, row["id"])
    assert row["state"] == "downloaded", row
    assert row["title"] == "Garden Party"
    assert row["bytes"] == row["total"] == len(site.data)
    item = await node.api("GET", f"/api/v1/items/{row['item_id']}")
    assert item["source"] == "url"
    assert item["title"] == "Garden Party"
    assert item["source_url"] == url
    assert item["visibility"] == "network"
    assert item["kind"] == "video"
    assert item["duration"] == pytest.approx(3.0, abs=0.3)
    assert hashlib.sha256(await content(node, item["id"])).digest() == hashlib.sha256(site.data).digest()
    # The download's working folder is gone: the file was renamed into the store.
    assert list((node.config.store_path / "downloads").iterdir()) == []
    listed = await node.api("GET", "/api/v1/downloads")
    assert [d["id"] for d in listed["downloads"]] == [row["id"]]


async def test_html_page_with_a_video_element(node_factory: NodeFactory, site: FakeSite) -> None:
    node = await node_factory(downloads=PRIVATE_OK)
    status, row = await post(node, {"url": site.url("/page.html")})
    assert status == 201
    row = await settled(node, row["id"])
    assert row["state"] == "downloaded", row
    assert site.fetches("/media/Garden Party.mp4")  # found through the page's <video src>
    item = await node.api("GET", f"/api/v1/items/{row['item_id']}")
    assert item["title"].startswith("Summer Evening")  # yt-dlp numbers a page's embedded videos: "(1)"
    assert item["source"] == "url"
    assert item["source_url"] == site.url("/page.html")
    assert await content(node, item["id"]) == site.data


async def test_missing_file_is_an_error_with_a_clear_message(node_factory: NodeFactory, site: FakeSite) -> None:
    node = await node_factory(downloads=PRIVATE_OK)
    status, row = await post(node, {"url": site.url("/nothing-here.mp4")})
    assert status == 201
    row = await settled(node, row["id"])
    assert row["state"] == "error"
    assert "404" in row["message"]
    assert "\n" not in row["message"] and "Traceback" not in row["message"]
    assert row["item_id"] is None
    assert (await node.api("GET", "/api/v1/items"))["items"] == []


async def test_broken_transfer_fails_then_retry_completes(node_factory: NodeFactory, site: FakeSite) -> None:
    node = await node_factory(downloads=PRIVATE_OK)
    status, row = await post(node, {"url": site.url("/flaky.mp4")})
    assert status == 201
    row = await settled(node, row["id"])
    assert row["state"] == "error", row
    assert row["message"]
    assert len(site.fetches("/flaky.mp4")) > 1  # yt-dlp retried on its own before giving up
    # Only failed or canceled downloads can be retried.
    async with node.client.patch(f"/api/v1/downloads/{row['id']}", json={"action": "fly"}, headers=node.auth) as resp:
        assert resp.status == 400

    site.broken = False
    retried = await node.api("PATCH", f"/api/v1/downloads/{row['id']}", json={"action": "retry"})
    assert retried["id"] == row["id"]
    assert retried["state"] in ("pending", "processing", "downloaded")
    row = await settled(node, row["id"])
    assert row["state"] == "downloaded", row
    assert await content(node, row["item_id"]) == site.data
    async with node.client.patch(f"/api/v1/downloads/{row['id']}", json={"action": "retry"}, headers=node.auth) as resp:
        assert resp.status == 409
        assert "downloaded" in (await resp.json())["error"]["message"]


async def test_cancel_a_slow_download(node_factory: NodeFactory, site: FakeSite) -> None:
    node = await node_factory(downloads=PRIVATE_OK)
    status, row = await post(node, {"url": site.url("/slow.mp4")})
    assert status == 201
    await asyncio.wait_for(site.at_gate.wait(), timeout=60)
    await wait_for(lambda: _state(node, row["id"], "processing"), "the download to be processing")
    canceled = await node.api("PATCH", f"/api/v1/downloads/{row['id']}", json={"action": "cancel"})
    assert canceled["id"] == row["id"]
    site.gate.set()  # more bytes arrive: yt-dlp's progress hook sees the cancel
    row = await settled(node, row["id"])
    assert row["state"] == "canceled"
    assert row["item_id"] is None
    assert not (node.config.store_path / "downloads" / row["id"]).exists()
    assert (await node.api("GET", "/api/v1/items"))["items"] == []
    async with node.client.patch(
        f"/api/v1/downloads/{row['id']}", json={"action": "cancel"}, headers=node.auth
    ) as resp:
        assert resp.status == 409


async def _state(node: RunningNode, download_id: str, state: str) -> bool:
    return (await get(node, download_id))["state"] == state


async def test_interrupted_download_is_taken_up_after_restart(node_factory: NodeFactory, site: FakeSite) -> None:
    node = await node_factory(downloads=PRIVATE_OK)
    status, row = await post(node, {"url": site.url("/slow.mp4")})
    assert status == 201
    await asyncio.wait_for(site.at_gate.wait(), timeout=60)
    folder = node.config.store_path / "downloads" / row["id"]

    def partial_bytes() -> int:
        return sum(p.stat().st_size for p in folder.glob("*.part")) if folder.exists() else 0

    await wait_for(lambda: partial_bytes() > 0, "yt-dlp to write part of the file")
    busy = [t for t in threading.enumerate() if t.name.startswith("pn-download")]
    await node.client.close()  # the node stops mid-download
    # The stopped node's yt-dlp thread notices the stop at its next progress tick, then ends.
    site.gate.set()
    await wait_for(lambda: not any(t.is_alive() for t in busy), "the old yt-dlp thread to end")
    assert partial_bytes() > 0
    # yt-dlp's HTTP downloader, stopped by our progress hook, drops its response without
    # closing it. Collect that socket now, where it is expected, rather than let its
    # ResourceWarning surface in whatever test the garbage collector happens to run in.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()

    port = free_port()
    again = TestClient(TestServer(create_app(node.config, node.identity), host="127.0.0.1", port=port))
    await again.start_server()
    try:
        restarted = RunningNode(config=node.config, identity=node.identity, token=node.token, client=again)
        row = await settled(restarted, row["id"])
        assert row["state"] == "downloaded", row
        # yt-dlp went on from its partial file rather than starting over.
        assert any(r and r.startswith("bytes=") and not r.startswith("bytes=0-") for r in site.fetches("/slow.mp4"))
        assert await content(restarted, row["item_id"]) == site.data
        items = (await restarted.api("GET", "/api/v1/items"))["items"]
        assert [i["id"] for i in items] == [row["item_id"]]
    finally:
        await again.close()


async def test_the_same_url_is_not_fetched_twice(node_factory: NodeFactory, site: FakeSite) -> None:
    node = await node_factory(downloads=PRIVATE_OK)
    url = site.url("/slow.mp4")
    status, first = await post(node, {"url": url})
    assert status == 201
    await asyncio.wait_for(site.at_gate.wait(), timeout=60)
    status, second = await post(node, {"url": "  " + url + " "})  # while it is in flight
    assert (status, second["id"]) == (200, first["id"])
    site.gate.set()
    row = await settled(node, first["id"])
    assert row["state"] == "downloaded"
    fetched = len(site.requests)
    status, third = await post(node, {"url": url})  # once it is downloaded
    assert (status, third["id"], third["state"]) == (200, first["id"], "downloaded")
    assert len(site.requests) == fetched
    assert len((await node.api("GET", "/api/v1/downloads"))["downloads"]) == 1

    # Once its item is deleted, the URL may be downloaded again.
    await node.api("DELETE", f"/api/v1/items/{row['item_id']}")
    status, fourth = await post(node, {"url": url})
    assert status == 201
    assert fourth["id"] != first["id"]
    assert (await settled(node, fourth["id"]))["state"] == "downloaded"


async def test_larger_than_max_filesize_is_an_error(node_factory: NodeFactory, site: FakeSite) -> None:
    node = await node_factory(downloads={**PRIVATE_OK, "max_filesize": "10KB"})
    assert len(site.data) > 10_000
    status, row = await post(node, {"url": site.url("/media/Garden%20Party.mp4")})
    assert status == 201
    row = await settled(node, row["id"])
    assert row["state"] == "error"
    assert "larger than" in row["message"] and "max_filesize" in row["message"]
    assert (await node.api("GET", "/api/v1/items"))["items"] == []


async def test_private_addresses_are_refused_by_default(node: RunningNode, site: FakeSite) -> None:
    for url in (site.url("/media/Garden%20Party.mp4"), "http://localhost:9/x.mp4", "http://[::1]:9/x.mp4"):
        status, body = await post(node, {"url": url})
        assert status == 403, (url, body)
        assert "private or local address" in body["error"]["message"]
        assert "allow_private" in body["error"]["message"]
    assert (await node.api("GET", "/api/v1/downloads"))["downloads"] == []
    assert site.requests == []


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://127.0.0.1/x.mp4"},
        {"url": "file:///etc/passwd"},
        {"url": "javascript:alert(1)"},
        {"url": "http://"},
        {"url": ""},
        {"url": 5},
        {},
        {"url": "http://127.0.0.1/" + "a" * 3000},
        {"url": "http://127.0.0.1/x.mp4", "visibility": "everyone"},
        {"url": "http://[::1"},
        {"url": "http://127.0.0.1:port/x.mp4"},
        {"url": "http://127.0.0.1:99999/x.mp4"},
    ],
)
async def test_bad_urls_are_400(node_factory: NodeFactory, body: dict[str, Any]) -> None:
    node = await node_factory(downloads=PRIVATE_OK)
    status, data = await post(node, body)
    assert status == 400, data
    assert data["error"]["code"] == "invalid_input"
    assert (await node.api("GET", "/api/v1/downloads"))["downloads"] == []


@pytest.mark.parametrize("allow_private", [True, False])
async def test_a_malformed_url_is_not_a_valid_url(node_factory: NodeFactory, allow_private: bool) -> None:
    node = await node_factory(downloads={**PRIVATE_OK, "allow_private": allow_private})
    status, data = await post(node, {"url": "http://[::1"})
    assert status == 400, data
    assert data["error"]["message"].startswith("not a valid URL")


async def test_events_stream_a_snapshot_then_progress(node_factory: NodeFactory, site: FakeSite) -> None:
    node = await node_factory(downloads=PRIVATE_OK)
    seen: list[tuple[str, Any]] = []
    async with node.client.get("/api/v1/downloads/events", headers=node.auth) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")

        async def next_event() -> tuple[str, Any]:
            name, data = "", ""
            while True:
                line = (await resp.content.readline()).decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    data += line[len("data: ") :]
                elif line == "" and name:
                    return name, json.loads(data)

        async with asyncio.timeout(90):
            seen.append(await next_event())
            status, row = await post(node, {"url": site.url("/media/Garden%20Party.mp4")})
            assert status == 201
            while True:
                name, data = await next_event()
                seen.append((name, data))
                if data.get("id") == row["id"] and data.get("state") in FINAL:
                    break
    assert seen[0] == ("snapshot", [])
    mine = [d for name, d in seen[1:] if name == "download" and d["id"] == row["id"]]
    states = [d["state"] for d in mine]
    assert states[0] == "pending"
    assert "processing" in states
    assert states[-1] == "downloaded"
    assert mine[-1]["item_id"] and mine[-1]["title"] == "Garden Party"
    # A reconnecting reader gets the current state in its snapshot.
    async with node.client.get("/api/v1/downloads/events", headers=node.auth) as resp:
        async with asyncio.timeout(30):
            assert (await resp.content.readline()).decode().strip() == "event: snapshot"
            snapshot = json.loads((await resp.content.readline()).decode()[len("data: ") :])
    assert [(d["id"], d["state"]) for d in snapshot] == [(row["id"], "downloaded")]


async def test_delete_with_and_without_the_file(node_factory: NodeFactory, site: FakeSite) -> None:
    node = await node_factory(downloads=PRIVATE_OK)
    ids = []
    for path in ("/media/Garden%20Party.mp4", "/page.html"):
        status, row = await post(node, {"url": site.url(path)})
        assert status == 201
        ids.append(row["id"])
    kept, removed = [await settled(node, i) for i in ids]
    assert kept["state"] == removed["state"] == "downloaded"
    assert kept["item_id"] == removed["item_id"]  # the same bytes: one item

    out = await node.api("DELETE", f"/api/v1/downloads/{kept['id']}")
    assert out == {"deleted": kept["id"], "file_deleted": False}
    await node.api("GET", f"/api/v1/items/{kept['item_id']}")  # the item stays

    out = await node.api("DELETE", f"/api/v1/downloads/{removed['id']}?delete_file=true")
    assert out["file_deleted"] is True
    async with node.client.get(f"/api/v1/items/{removed['item_id']}", headers=node.auth) as resp:
        assert resp.status == 404
    assert (await node.api("GET", "/api/v1/downloads"))["downloads"] == []
    assert [p for p in (node.config.store_path / "blobs").rglob("*") if p.is_file()] == []
    async with node.client.delete(f"/api/v1/downloads/{removed['id']}", headers=node.auth) as resp:
        assert resp.status == 404
