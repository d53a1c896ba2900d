"""Resumable browser uploads: the tus 1.0 server, driven by a real tus client (tuspy).

tuspy is blocking (requests), so it runs in a thread while the in-process
node keeps serving. Interruptions are made by hand on a raw socket: a PATCH
that announces more bytes than it sends, then hangs up.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from tusclient import client as tus
from tusclient.exceptions import TusCommunicationError
from tusclient.storage.interface import Storage
from tusclient.uploader import Uploader

from node.store import CmaStore
from node.uploads import MAX_METADATA, Uploads, UploadsApi
from priv_network import db
from tests.conftest import NodeFactory, RunningNode

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


class MemoryStorage(Storage):
    """tuspy's URL store (fingerprint -> upload URL), kept in memory: how a client resumes."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}

    def get_item(self, key: str) -> str | None:
        return self.urls.get(key)

    def set_item(self, key: str, url: str) -> None:
        self.urls[key] = url

    def remove_item(self, key: str) -> None:
        self.urls.pop(key, None)


class Source(io.BytesIO):
    """The bytes to upload, as a stream for tuspy.

    tuspy never closes a file it opens from ``file_path`` (a ResourceWarning
    per request), and closes a stream it was given after fingerprinting it;
    this stream stays open until garbage-collected.
    """

    def close(self) -> None:
        pass


class Sha256Uploader(Uploader):
    """tuspy sends sha1 checksums by default; the server also takes sha256."""

    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)


async def wait_for(condition: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 30) -> None:
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
        await asyncio.sleep(0.02)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def tus_client(node: RunningNode) -> tus.TusClient:
    return tus.TusClient(str(node.client.make_url("/api/v1/uploads/")), headers=node.auth)


def part_file(node: RunningNode, url: str) -> Path:
    return node.config.store_path / "uploads" / f"{url.rstrip('/').rsplit('/', 1)[-1]}.part"


def path_of(url: str) -> str:
    return "/api/v1/uploads/" + url.rstrip("/").rsplit("/", 1)[-1]


async def head(node: RunningNode, url: str) -> tuple[int, Any]:
    async with node.client.head(path_of(url), headers={**node.auth, **TUS}) as resp:
        return resp.status, resp.headers


async def offset_of(node: RunningNode, url: str) -> int:
    status, headers = await head(node, url)
    assert status == 200, status
    return int(headers["Upload-Offset"])


async def info(node: RunningNode, url: str) -> dict[str, Any]:
    return await node.api("GET", path_of(url))


async def patch(
    node: RunningNode, url: str, offset: int, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    sent = {**node.auth, **TUS, **OCTETS, "Upload-Offset": str(offset), **(headers or {})}
    async with node.client.patch(path_of(url), data=io.BytesIO(data), headers=sent) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, resp.headers, body


async def create(node: RunningNode, length: int, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    sent = {**node.auth, **TUS, "Upload-Length": str(length), **(headers or {})}
    async with node.client.post("/api/v1/uploads/", headers=sent) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, resp.headers, body


async def new_upload(node: RunningNode, length: int) -> str:
    status, headers, body = await create(node, length)
    assert status == 201, body
    return str(headers["Location"])


async def wait_idle(node: RunningNode, url: str) -> None:
    """Wait until no PATCH holds the upload: an empty PATCH at the current offset is then accepted."""

    async def idle() -> bool:
        status, _, _ = await patch(node, url, await offset_of(node, url), b"")
        return status == 204

    await wait_for(idle, "the interrupted PATCH to let go of the upload")


class RawPatch:
    """A PATCH written by hand, so that it can stop in the middle of its body."""

    def __init__(self, node: RunningNode, url: str, offset: int, length: int, checksum: str | None = None) -> None:
        self.node = node
        self.url = url
        self.offset = offset
        self.length = length
        self.checksum = checksum
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def request_line(self) -> list[str]:
        return [f"PATCH {path_of(self.url)} HTTP/1.1", f"Upload-Offset: {self.offset}"]

    async def start(self, first: bytes) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.node.client.port)
        lines = [
            *self.request_line(),
            f"Host: 127.0.0.1:{self.node.client.port}",
            f"Authorization: Bearer {self.node.token}",
            "Tus-Resumable: 1.0.0",
            "Content-Type: application/offset+octet-stream",
            f"Content-Length: {self.length}",
            "Connection: close",
        ]
        if self.checksum:
            lines.append(f"Upload-Checksum: {self.checksum}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + first)
        await self.writer.drain()

    async def cut(self) -> None:
        """Hang up before the announced Content-Length was sent."""
        assert self.writer is not None
        self.writer.close()
        await self.writer.wait_closed()

    async def finish(self, rest: bytes) -> tuple[int, dict[str, str]]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(rest)
        await self.writer.drain()
        head_block = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout=60)
        self.writer.close()
        status_line, *header_lines = head_block.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers


class RawCreate(RawPatch):
    """A creation-with-upload POST written by hand (the whole upload in its body)."""

    def __init__(self, node: RunningNode, length: int, checksum: str | None = None) -> None:
        super().__init__(node, "", 0, length, checksum)

    def request_line(self) -> list[str]:
        return ["POST /api/v1/uploads/ HTTP/1.1", f"Upload-Length: {self.length}"]


@pytest.fixture(params=["serve", "cancelling"])
def cancels_handlers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """`serve` (web.run_app) lets a handler finish when its client hangs up; aiohttp's TestServer
    cancels it. The upload must stay consistent either way, so the cut tests run under both."""
    if request.param == "cancelling":
        return True
    original = TestServer._make_runner

    async def make_runner(self: TestServer, **kwargs: Any) -> Any:
        return await original(self, **{**kwargs, "handler_cancellation": False})

    monkeypatch.setattr(TestServer, "_make_runner", make_runner)
    return False


def uploads_of(node: RunningNode) -> Uploads:
    """The node's Uploads object, found through the routes of its app."""
    for route in node.client.app.router.routes():
        owner = getattr(route.handler, "__self__", None)
        if isinstance(owner, UploadsApi):
            return owner.uploads
    raise AssertionError("no tus routes in the app")


async def test_options_advertise_the_protocol(node_factory: NodeFactory) -> None:
    node = await node_factory(uploads={"max_size": "5GiB"})
    async with node.client.options("/api/v1/uploads/", headers=node.auth) as resp:
        assert resp.status == 204
        assert resp.headers["Tus-Version"] == "1.0.0"
        assert resp.headers["Tus-Resumable"] == "1.0.0"
        extensions = set(resp.headers["Tus-Extension"].split(","))
        assert extensions >= {"creation", "creation-with-upload", "checksum", "expiration", "termination"}
        assert set(resp.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256"}
        assert resp.headers["Tus-Max-Size"] == str(5 * 1024**3)
    async with node.client.options("/api/v1/uploads/") as resp:
        assert resp.status == 401


async def test_large_upload_cut_twice_resumes_and_stores_exact_bytes(
    node_factory: NodeFactory, cancels_handlers: bool
) -> None:
    node = await node_factory()
    data = os.urandom(20 * MiB + 12345)
    storage = MemoryStorage()
    client = tus_client(node)
    metadata = {"filename": "holiday.bin", "title": "Holiday Film", "visibility": "network"}

    def uploader(cls: type[Uploader] = Uploader) -> Uploader:
        return cls(
            file_stream=Source(data),
            client=client,
            chunk_size=4 * MiB,
            metadata=metadata,
            upload_checksum=True,
            store_url=True,
            url_storage=storage,
        )

    first = await asyncio.to_thread(uploader)
    await asyncio.to_thread(first.upload_chunk)
    url = first.url
    assert url and first.offset == 4 * MiB
    part = part_file(node, url)
    assert part.stat().st_size == 4 * MiB

    # Cut 1: a chunk with a checksum, half sent. The server was writing it (the file grew)...
    chunk = data[4 * MiB : 12 * MiB]
    cut = RawPatch(node, url, 4 * MiB, len(chunk), checksum="sha1 " + b64(hashlib.sha1(chunk).digest()))
    await cut.start(chunk[: 5 * MiB])
    await wait_for(lambda: part.stat().st_size > 4 * MiB, "the server to write part of the chunk")
    await cut.cut()
    await wait_idle(node, url)
    # ...but an unverifiable chunk is discarded whole.
    assert await offset_of(node, url) == 4 * MiB
    assert part.stat().st_size == 4 * MiB

    # A new client resumes from its stored URL and the server's offset (HEAD).
    second = await asyncio.to_thread(uploader, Sha256Uploader)
    assert second.url == url
    assert second.offset == 4 * MiB
    await asyncio.to_thread(second.upload, 12 * MiB)
    assert await offset_of(node, url) == 12 * MiB

    # Cut 2: no checksum, so the bytes that arrived are kept (tus allows it) and HEAD says how many;
    # a cancelled handler keeps none (it never recorded them).
    chunk = data[12 * MiB : 20 * MiB]
    cut = RawPatch(node, url, 12 * MiB, len(chunk))
    await cut.start(chunk[: 5 * MiB])
    await wait_for(lambda: part.stat().st_size >= 16 * MiB, "the server to write part of the chunk")
    await cut.cut()
    await wait_idle(node, url)
    kept = await offset_of(node, url)
    if cancels_handlers:
        assert kept == 12 * MiB
    else:
        assert 16 * MiB <= kept <= 17 * MiB
    assert part.stat().st_size == kept
    assert part.read_bytes() == data[:kept]

    third = await asyncio.to_thread(uploader)
    assert (third.url, third.offset) == (url, kept)
    await asyncio.to_thread(third.upload)

    state = await info(node, url)
    assert state["state"] == "complete"
    assert (state["offset"], state["length"]) == (len(data), len(data))
    assert state["duplicate"] is False
    assert state["metadata"]["title"] == "Holiday Film"
    item = await node.api("GET", f"/api/v1/items/{state['item_id']}")
    assert item["title"] == "Holiday Film"
    assert item["visibility"] == "network"
    assert item["source"] == "upload"
    assert item["size"] == len(data)
    stored = node.config.store_path / "blobs" / item["content_hash"][:2] / item["content_hash"][2:4]
    assert sha256((stored / item["content_hash"]).read_bytes()) == sha256(data)
    async with node.client.get(item["content_url"], headers=node.auth) as resp:
        assert resp.status == 200
        assert sha256(await resp.read()) == sha256(data)
    # The finished upload was renamed into the store: no partial file, no second copy.
    assert not part.exists()
    assert list((node.config.store_path / "uploads").iterdir()) == []


async def test_same_file_uploaded_twice_is_reported_as_duplicate(node: RunningNode) -> None:
    data = os.urandom(300_000)
    up = tus_client(node).uploader(file_stream=Source(data), chunk_size=100_000, metadata={"filename": "clip.bin"})
    await asyncio.to_thread(up.upload)
    assert up.url
    first = await info(node, up.url)
    assert (first["state"], first["duplicate"]) == ("complete", False)

    # The same bytes again, this time in one request (creation-with-upload).
    headers = {**node.auth, **TUS, **OCTETS, "Upload-Length": str(len(data))}
    wrong = {**headers, "Upload-Checksum": "sha256 " + b64(hashlib.sha256(b"not it").digest())}
    async with node.client.post("/api/v1/uploads/", data=data, headers=wrong) as resp:
        assert resp.status == 460  # a creation-with-upload body is checked too
    async with node.client.post("/api/v1/uploads/", data=data, headers=headers) as resp:
        assert resp.status == 201
        assert resp.headers["Upload-Offset"] == str(len(data))
        assert resp.headers["X-Item-Id"] == first["item_id"]
        second_url = resp.headers["Location"]
    second = await info(node, second_url)
    assert second["state"] == "complete"
    assert second["duplicate"] is True
    assert second["item_id"] == first["item_id"]
    assert len((await node.api("GET", "/api/v1/items"))["items"]) == 1
    # The creation whose body failed its checksum left nothing behind.
    assert list((node.config.store_path / "uploads").iterdir()) == []


async def test_bad_checksum_is_refused_and_the_chunk_discarded(node: RunningNode) -> None:
    data = os.urandom(3 * MiB)
    url = await new_upload(node, len(data))
    status, _, _ = await patch(
        node, url, 0, data[:MiB], {"Upload-Checksum": "sha1 " + b64(hashlib.sha1(data[:MiB]).digest())}
    )
    assert status == 204
    wrong = "sha256 " + b64(hashlib.sha256(b"something else").digest())
    status, _, body = await patch(node, url, MiB, data[MiB : 2 * MiB], {"Upload-Checksum": wrong})
    assert status == 460
    assert body["error"]["code"] == "checksum_mismatch"
    assert await offset_of(node, url) == MiB
    assert part_file(node, url).stat().st_size == MiB
    # Unknown algorithm or undecodable value: 400, nothing written.
    for header in ("md5 " + b64(hashlib.md5(b"").digest()), "sha1 not*base64"):
        status, _, _ = await patch(node, url, MiB, data[MiB:], {"Upload-Checksum": header})
        assert status == 400
    assert await offset_of(node, url) == MiB
    # The right chunk afterwards completes the upload with the right bytes.
    good = "sha256 " + b64(hashlib.sha256(data[MiB:]).digest())
    status, headers, _ = await patch(node, url, MiB, data[MiB:], {"Upload-Checksum": good})
    assert status == 204
    item = await node.api("GET", f"/api/v1/items/{headers['X-Item-Id']}")
    async with node.client.get(item["content_url"], headers=node.auth) as resp:
        assert sha256(await resp.read()) == sha256(data)


async def test_offset_conflict(node: RunningNode) -> None:
    url = await new_upload(node, 1000)
    status, _, _ = await patch(node, url, 0, b"a" * 100)
    assert status == 204
    for wrong in (0, 50, 200):
        status, _, body = await patch(node, url, wrong, b"b" * 100)
        assert status == 409
        assert "does not match" in body["error"]["message"]
    assert await offset_of(node, url) == 100
    # A body past Upload-Length is refused and not kept.
    status, _, _ = await patch(node, url, 100, b"c" * 1000)
    assert status == 400
    assert await offset_of(node, url) == 100
    assert part_file(node, url).read_bytes() == b"a" * 100


async def test_two_writers_at_once_one_wins_and_the_file_is_intact(node: RunningNode) -> None:
    data = os.urandom(10 * MiB)
    url = await new_upload(node, len(data))
    part = part_file(node, url)
    chunk = data[: 8 * MiB]
    writer = RawPatch(node, url, 0, len(chunk))
    await writer.start(chunk[: 5 * MiB])
    await wait_for(lambda: part.stat().st_size >= 4 * MiB, "the first writer to be writing")
    # A second client writes other bytes at the same offset meanwhile.
    status, _, body = await patch(node, url, 0, os.urandom(MiB))
    assert status == 409
    assert "another client" in body["error"]["message"]
    status, headers = await writer.finish(chunk[5 * MiB :])
    assert status == 204
    assert headers["upload-offset"] == str(8 * MiB)
    assert part.read_bytes() == chunk

    # Given an upload URL, tuspy asks the server for the offset (HEAD) as it is built: in a thread too.
    up = await asyncio.to_thread(
        tus_client(node).uploader, file_stream=Source(data), url=str(node.client.make_url(path_of(url)))
    )
    assert up.offset == 8 * MiB
    await asyncio.to_thread(up.upload)
    state = await info(node, url)
    item = await node.api("GET", f"/api/v1/items/{state['item_id']}")
    async with node.client.get(item["content_url"], headers=node.auth) as resp:
        assert sha256(await resp.read()) == sha256(data)


async def test_finished_and_deleted_uploads(node: RunningNode) -> None:
    url = await new_upload(node, 10)
    status, _, _ = await patch(node, url, 0, b"0123456789")
    assert status == 204
    status, _, body = await patch(node, url, 10, b"more")
    assert status == 403
    assert "complete" in body["error"]["message"]
    status, _, _ = await patch(node, url, 0, b"0123456789")
    assert status == 403

    # Termination: the partial file goes, and the upload is unknown afterwards.
    url = await new_upload(node, 1000)
    status, _, _ = await patch(node, url, 0, b"x" * 400)
    assert status == 204
    part = part_file(node, url)
    assert part.stat().st_size == 400
    async with node.client.delete(path_of(url), headers=node.auth) as resp:
        assert resp.status == 412  # termination needs Tus-Resumable too
    assert part.exists()
    async with node.client.delete(path_of(url), headers={**node.auth, **TUS}) as resp:
        assert resp.status == 204
    assert not part.exists()
    status, _, _ = await patch(node, url, 400, b"y" * 100)
    assert status == 404
    assert (await head(node, url))[0] == 404
    async with node.client.delete(path_of(url), headers={**node.auth, **TUS}) as resp:
        assert resp.status == 404
    assert (await head(node, "/api/v1/uploads/not-an-upload-id"))[0] == 404


async def test_uploads_belong_to_their_owner(node: RunningNode) -> None:
    url = await new_upload(node, 100)
    other = await node.api("POST", "/api/v1/tokens", json={"name": "bob"})
    bob = {"Authorization": f"Bearer {other['token']}"}
    async with node.client.head(path_of(url), headers={**bob, **TUS}) as resp:
        assert resp.status == 404
    async with node.client.patch(
        path_of(url), data=b"x", headers={**bob, **TUS, **OCTETS, "Upload-Offset": "0"}
    ) as resp:
        assert resp.status == 404
    assert await offset_of(node, url) == 0
    # A user who is not an owner uploads private items only.
    headers = {**bob, **TUS, "Upload-Length": "10"}
    async with node.client.post("/api/v1/uploads/", headers=headers) as resp:
        assert resp.status == 201
    network = {**headers, "Upload-Metadata": "visibility " + b64(b"network")}
    async with node.client.post("/api/v1/uploads/", headers=network) as resp:
        assert resp.status == 403
        assert "private" in (await resp.json())["error"]["message"]


async def test_too_large_is_refused_up_front(node_factory: NodeFactory) -> None:
    node = await node_factory(uploads={"max_size": "1MiB"})
    status, _, body = await create(node, MiB + 1)
    assert status == 413
    assert str(MiB) in body["error"]["message"]
    assert list((node.config.store_path / "uploads").iterdir()) == []
    # tuspy sees the same refusal when it asks for an upload URL.
    up = tus_client(node).uploader(file_stream=Source(b"\0" * (MiB + 1)))
    with pytest.raises(TusCommunicationError) as caught:
        await asyncio.to_thread(up.upload)
    assert caught.value.status_code == 413
    status, _, _ = await create(node, MiB)
    assert status == 201


async def test_bigger_than_free_disk_is_refused_up_front(node_factory: NodeFactory) -> None:
    node = await node_factory(store={"min_free": "1000TiB"})
    status, _, body = await create(node, 1000)
    assert status == 507
    assert "free disk" in body["error"]["message"]
    assert list((node.config.store_path / "uploads").iterdir()) == []


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "0x10", "99999999999999999999999"])
async def test_bad_numbers_are_400(node: RunningNode, value: str) -> None:
    status, _, body = await create(node, 0, {"Upload-Length": value})
    assert status == 400, body
    assert "Upload-Length" in body["error"]["message"]
    url = await new_upload(node, 100)
    status, _, body = await patch(node, url, 0, b"x", {"Upload-Offset": value})
    assert status == 400, body
    assert "Upload-Offset" in body["error"]["message"]
    assert await offset_of(node, url) == 0


async def test_missing_length_and_deferred_length_are_400(node: RunningNode) -> None:
    async with node.client.post("/api/v1/uploads/", headers={**node.auth, **TUS}) as resp:
        assert resp.status == 400
        assert "Upload-Length" in (await resp.json())["error"]["message"]
    status, _, body = await create(node, 10, {"Upload-Defer-Length": "1"})
    assert status == 400
    assert "Defer" in body["error"]["message"]


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ("title " + b64(b"x" * MAX_METADATA), "longer than"),
        ("title not-base64!", "base64"),
        ("title " + b64(b"a") + ",title " + b64(b"b"), "pairs"),
        ("visibility " + b64(b"everyone"), "visibility"),
    ],
)
async def test_bad_metadata_is_400(node: RunningNode, metadata: str, words: str) -> None:
    status, _, body = await create(node, 10, {"Upload-Metadata": metadata})
    assert status == 400, body
    assert words in body["error"]["message"]
    assert list((node.config.store_path / "uploads").iterdir()) == []


async def test_wrong_content_type_is_415_and_missing_version_412(node: RunningNode) -> None:
    url = await new_upload(node, 100)
    status, _, body = await patch(node, url, 0, b"x" * 10, {"Content-Type": "application/octet-stream"})
    assert status == 415
    assert "offset+octet-stream" in body["error"]["message"]
    headers = {**node.auth, **OCTETS, "Upload-Offset": "0"}
    async with node.client.patch(path_of(url), data=b"x" * 10, headers=headers) as resp:
        assert resp.status == 412
    async with node.client.patch(path_of(url), data=b"x", headers={**headers, "Tus-Resumable": "0.2.2"}) as resp:
        assert resp.status == 412
    async with node.client.post("/api/v1/uploads/", headers={**node.auth, "Upload-Length": "10"}) as resp:
        assert resp.status == 412
        assert "1.0.0" in (await resp.json())["error"]["message"]
    assert await offset_of(node, url) == 0


async def test_expired_uploads_answer_410_and_are_swept(node_factory: NodeFactory) -> None:
    node = await node_factory(uploads={"expiry": "1s"})
    url = await new_upload(node, 1000)
    status, headers, _ = await patch(node, url, 0, b"x" * 10)
    assert status == 204
    assert headers["Upload-Expires"].endswith("GMT")
    kept = await new_upload(node, 1000)  # finished below, so never swept
    status, _, _ = await patch(node, kept, 0, b"k" * 1000)
    assert status == 204
    part = part_file(node, url)
    assert part.exists()

    async def gone() -> bool:
        return (await head(node, url))[0] == 410

    await wait_for(gone, "the upload to expire")
    status, _, body = await patch(node, url, 10, b"x")
    assert status == 410
    assert "expired" in body["error"]["message"]
    assert part.exists()  # expiry alone removes nothing; the sweep does

    assert await uploads_of(node).sweep() == 1
    assert not part.exists()
    assert (await head(node, url))[0] == 404
    assert (await info(node, kept))["state"] == "complete"
    assert await uploads_of(node).sweep() == 0


async def test_every_tus_response_says_tus_resumable(node: RunningNode) -> None:
    """tus 1.0: every response carries Tus-Resumable, errors included (even those given
    before a handler runs), so that a client can tell it is speaking to a tus server."""
    url = await new_upload(node, 100)
    answers: list[tuple[str, int, Any]] = []

    async def send(what: str, method: str, path: str, headers: dict[str, str], data: bytes | None = None) -> None:
        async with node.client.request(method, path, headers=headers, data=data) as resp:
            answers.append((what, resp.status, resp.headers.get("Tus-Resumable")))

    full = {**node.auth, **TUS, **OCTETS}
    await send("no credentials", "PATCH", path_of(url), {**TUS, **OCTETS, "Upload-Offset": "0"}, b"x")
    await send("bad token", "HEAD", path_of(url), {"Authorization": "Bearer pn_nope", **TUS})
    await send("unknown upload", "HEAD", "/api/v1/uploads/" + "0" * 32, {**node.auth, **TUS})
    await send("method not allowed", "PUT", path_of(url), full, b"x")
    await send("no version", "PATCH", path_of(url), {**node.auth, **OCTETS, "Upload-Offset": "0"}, b"x")
    await send("wrong type", "PATCH", path_of(url), {**node.auth, **TUS, "Upload-Offset": "0"}, b"x")
    await send("offset conflict", "PATCH", path_of(url), {**full, "Upload-Offset": "5"}, b"x")
    await send("bad offset", "PATCH", path_of(url), {**full, "Upload-Offset": "-1"}, b"x")
    wrong = "sha1 " + b64(hashlib.sha1(b"y").digest())
    await send("bad checksum", "PATCH", path_of(url), {**full, "Upload-Offset": "0", "Upload-Checksum": wrong}, b"x")
    await send("too large", "POST", "/api/v1/uploads/", {**node.auth, **TUS, "Upload-Length": str(2**62)})
    await send("written", "PATCH", path_of(url), {**full, "Upload-Offset": "0"}, b"x")
    await send("head", "HEAD", path_of(url), {**node.auth, **TUS})
    await send("created", "POST", "/api/v1/uploads/", {**node.auth, **TUS, "Upload-Length": "1"})
    await send("terminated", "DELETE", path_of(url), {**node.auth, **TUS})
    statuses = [status for _, status, _ in answers]
    assert statuses == [401, 401, 404, 405, 412, 415, 409, 400, 460, 413, 204, 200, 201, 204], answers
    assert [what for what, _, version in answers if version != "1.0.0"] == []


async def upload_rows(node: RunningNode) -> list[str]:
    """Ids of the node's unfinished uploads, straight from its database."""
    engine = db.create_engine(node.config.database_url)
    try:
        return await CmaStore(engine).expired_uploads(time.time() + 10**9)
    finally:
        await engine.dispose()


async def test_failed_creation_with_upload_leaves_nothing(node: RunningNode, cancels_handlers: bool) -> None:
    """A POST whose body fails gives its client no Location: nothing could resume it, so
    nothing of it may stay (no row, no partial file), and nothing else is touched."""
    uploads_dir = node.config.store_path / "uploads"
    data = os.urandom(6 * MiB)
    headers = {**node.auth, **TUS, **OCTETS, "Upload-Length": str(len(data))}
    wrong = "sha256 " + b64(hashlib.sha256(b"not it").digest())
    async with node.client.post(
        "/api/v1/uploads/", data=io.BytesIO(data), headers={**headers, "Upload-Checksum": wrong}
    ) as resp:
        assert resp.status == 460
        assert "Location" not in resp.headers
    async with node.client.post("/api/v1/uploads/", data=io.BytesIO(data + b"!"), headers=headers) as resp:
        assert resp.status == 400
        assert "Upload-Length" in (await resp.json())["error"]["message"]
    async with node.client.post("/api/v1/uploads/", data=b"x", headers={**headers, "Upload-Checksum": "md5 x"}) as resp:
        assert resp.status == 400
    assert list(uploads_dir.iterdir()) == []
    assert await upload_rows(node) == []

    def writing() -> bool:
        return any(p.stat().st_size >= 4 * MiB for p in uploads_dir.iterdir())

    async def gone() -> bool:
        return not any(uploads_dir.iterdir()) and await upload_rows(node) == []

    # Bodies cut mid-way, with a checksum and without one (which a PATCH would keep).
    for checksum in ("sha1 " + b64(hashlib.sha1(data).digest()), None):
        cut = RawCreate(node, len(data), checksum)
        await cut.start(data[: 5 * MiB])
        await wait_for(writing, "the server to write part of the body")
        await cut.cut()
        await wait_for(gone, "the failed creation to be removed")
    assert (await node.api("GET", "/api/v1/items"))["items"] == []

    # And a creation-with-upload that works still does.
    async with node.client.post("/api/v1/uploads/", data=io.BytesIO(data), headers=headers) as resp:
        assert resp.status == 201
        assert resp.headers["Upload-Offset"] == str(len(data))
        item = await node.api("GET", f"/api/v1/items/{resp.headers['X-Item-Id']}")
    assert item["size"] == len(data)
