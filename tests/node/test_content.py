"""Serving items over the admin API: bytes, HTTP Range, validators, posters, auth, identity."""

from __future__ import annotations

import asyncio
import hashlib
import re
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from priv_network import __version__
from priv_network.identity import b64u_decode, node_id_from_public_key
from tests.conftest import RunningNode

BIG_SIZE = 64 * 1024 * 1024
CHUNK = 1024 * 1024


@dataclass
class Library:
    node: RunningNode
    media: Path
    video: dict[str, Any]
    audio: dict[str, Any]
    image: dict[str, Any]

    @property
    def video_bytes(self) -> bytes:
        return (self.media / "Spider-Man Homecoming.mp4").read_bytes()

    def content_url(self, item: dict[str, Any]) -> str:
        return f"/api/v1/items/{item['id']}/content"


@pytest.fixture
async def library(node: RunningNode, media_dir: Path) -> Library:
    report = await node.api("POST", "/api/v1/items", json={"paths": [str(media_dir)]})
    by_kind = {i["kind"]: i for i in report["added"]}
    return Library(node=node, media=media_dir, video=by_kind["video"], audio=by_kind["audio"], image=by_kind["image"])


async def fetch(node: RunningNode, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    async with node.client.get(path, headers={**node.auth, **(headers or {})}) as resp:
        return resp.status, resp.headers, await resp.read()


async def raw_get(node: RunningNode, target: str, *, token: str | None = None) -> tuple[int, bytes]:
    """Send a request line exactly as written: no client-side URL normalization of '..' or '%2e'."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.client.port)
    try:
        auth = f"Authorization: Bearer {token or node.token}\r\n"
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def assert_json_error(body: Any, code: str) -> None:
    assert isinstance(body, dict), body
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]


# -- whole file and ranges ------------------------------------------------------


async def test_full_content_has_type_length_bytes_and_validators(library: Library) -> None:
    src = library.video_bytes
    status, headers, body = await fetch(library.node, library.content_url(library.video))
    assert status == 200
    assert headers["Content-Type"] == "video/mp4"
    assert int(headers["Content-Length"]) == len(src) == library.video["size"]
    assert body == src
    assert headers["Accept-Ranges"] == "bytes"
    assert re.fullmatch(r'"[^"]+"', headers["ETag"])
    assert "Content-Range" not in headers

    status, headers, body = await fetch(library.node, library.content_url(library.audio))
    assert (status, headers["Content-Type"]) == (200, "audio/mpeg")
    assert body == (library.media / "Amélie - La Valse.mp3").read_bytes()
    status, headers, body = await fetch(library.node, library.content_url(library.image))
    assert (status, headers["Content-Type"]) == (200, "image/png")
    assert body == (library.media / "cover.png").read_bytes()


@pytest.mark.parametrize(
    ("spec", "start", "stop"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=0-99", 0, 100),
        ("bytes=1000-4999", 1000, 5000),
        ("bytes=5000-", 5000, None),
        ("bytes=-500", -500, None),
        ("bytes=100-999999999", 100, None),  # last-pos past the end means "to the end"
        ("bytes=-999999999", 0, None),  # a suffix longer than the file is the whole file
    ],
)
async def test_single_range_gets_206_with_exact_slice(
    library: Library, spec: str, start: int, stop: int | None
) -> None:
    src = library.video_bytes
    size = len(src)
    expected = src[start:stop] if start >= 0 or -start <= size else src
    first = size - len(expected) if start < 0 else start
    status, headers, body = await fetch(library.node, library.content_url(library.video), {"Range": spec})
    assert status == 206
    assert body == expected
    assert int(headers["Content-Length"]) == len(expected)
    assert headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{size}"
    assert headers["Content-Type"] == "video/mp4"


async def test_seeking_back_and_forth_returns_the_right_bytes_each_time(library: Library) -> None:
    src = library.video_bytes
    size = len(src)
    # What a player does: probe the head, jump to the moov atom at the end, then seek around.
    seeks = [(0, 1), (size - 2048, size), (size // 2, size // 2 + 4096), (17, 18), (size // 3, size), (0, size)]
    async with library.node.client.get(library.content_url(library.video), headers=library.node.auth) as resp:
        etag = resp.headers["ETag"]
    for start, stop in seeks:
        status, headers, body = await fetch(
            library.node, library.content_url(library.video), {"Range": f"bytes={start}-{stop - 1}", "If-Range": etag}
        )
        assert status == 206, (start, stop)
        assert body == src[start:stop]
        assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert headers["ETag"] == etag


@pytest.mark.parametrize("spec", ["bytes=SIZE-", "bytes=SIZE-SIZE", "bytes=999999999-"])
async def test_range_past_the_end_is_416_with_the_size(library: Library, spec: str) -> None:
    size = library.video["size"]
    status, headers, _body = await fetch(
        library.node, library.content_url(library.video), {"Range": spec.replace("SIZE", str(size))}
    )
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize(
    "spec",
    [
        "garbage",
        "bytes=abc-def",
        "bytes=",
        "bytes=-",
        "bytes = 0-9",
        "items=0-9",
        "pages=1-2",
        "bytes=0-9,20-29",
        "bytes=0-9, -5",
    ],
)
async def test_malformed_range_is_ignored_and_the_whole_file_sent(library: Library, spec: str) -> None:
    src = library.video_bytes
    status, headers, body = await fetch(library.node, library.content_url(library.video), {"Range": spec})
    assert status == 200, spec
    assert body == src
    assert "Content-Range" not in headers
    assert int(headers["Content-Length"]) == len(src)


async def test_if_range_with_matching_etag_gives_206_and_stale_one_gives_200(library: Library) -> None:
    src = library.video_bytes
    url = library.content_url(library.video)
    _status, headers, _body = await fetch(library.node, url)
    etag = headers["ETag"]

    status, headers, body = await fetch(library.node, url, {"Range": "bytes=10-19", "If-Range": etag})
    assert (status, body) == (206, src[10:20])

    for stale in ('"0-0"', etag[:-2] + 'f"', f"W/{etag}"):  # another tag, a near miss, a weak tag
        status, headers, body = await fetch(library.node, url, {"Range": "bytes=10-19", "If-Range": stale})
        assert status == 200, stale
        assert body == src
        assert "Content-Range" not in headers


# -- posters ------------------------------------------------------------------------


async def test_poster_is_a_jpeg_for_video_and_404_for_audio(library: Library) -> None:
    assert library.video["poster_url"] == f"/api/v1/items/{library.video['id']}/poster"
    status, headers, body = await fetch(library.node, library.video["poster_url"])
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert body[:3] == b"\xff\xd8\xff" and body[-2:] == b"\xff\xd9"

    assert library.audio["poster_url"] is None
    async with library.node.client.get(
        f"/api/v1/items/{library.audio['id']}/poster", headers=library.node.auth
    ) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert_json_error(await resp.json(), "not_found")


# -- bad IDs ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/content", "/poster"])
async def test_unknown_and_malformed_ids_are_404_json(library: Library, suffix: str) -> None:
    real = library.video["id"]
    for bad in ("a" * 26, "2" * 26, real.upper(), real[:-1], real + "a", "x" * 300, "%00", real[:-1] + "%21"):
        async with library.node.client.get(f"/api/v1/items/{bad}{suffix}", headers=library.node.auth) as resp:
            assert resp.status == 404, bad
            assert resp.content_type == "application/json"
            assert_json_error(await resp.json(), "not_found")


async def test_changing_unknown_or_malformed_ids_is_404_json(library: Library) -> None:
    for bad in ("a" * 26, library.video["id"].upper(), "%00", "x" * 300):
        for method, body in (("DELETE", None), ("PATCH", {"title": "t"})):
            async with library.node.client.request(
                method, f"/api/v1/items/{bad}", json=body, headers=library.node.auth
            ) as resp:
                assert resp.status == 404, (method, bad)
                assert_json_error(await resp.json(), "not_found")
    assert len((await library.node.api("GET", "/api/v1/items"))["items"]) == 4


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/items/../content",
        "/api/v1/items/%2e%2e/content",
        "/api/v1/items/%2E%2E/content",
        "/api/v1/items/..%2f..%2fnode.key/content",
        "/api/v1/items/%2e%2e%2f%2e%2e%2f%2e%2e%2fnode.db/content",
        "/api/v1/items/..%5c..%5cnode.key/content",
        "/api/v1/items/ID/../../../node.key",
        "/api/v1/items/ID%2f..%2f..%2fnode.key/content",
        "/api/v1/items/" + "a" * 5000 + "/content",
    ],
)
async def test_path_traversal_in_ids_is_404_json(library: Library, target: str) -> None:
    status, body = await raw_get(library.node, target.replace("ID", library.video["id"]))
    assert status == 404
    assert b'"code": "not_found"' in body
    assert b"BEGIN PRIVATE KEY" not in body and b"SQLite" not in body


# -- authentication and rights -------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer pn_not-a-real-token"},
        {"Authorization": "Bearer not-even-the-prefix"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": "pn_tokenwithoutscheme"},
        {"Authorization": ""},
    ],
)
async def test_missing_or_bad_credentials_are_401_json(library: Library, headers: dict[str, str]) -> None:
    video_id = library.video["id"]
    for path in ("/api/v1/items", f"/api/v1/items/{video_id}", f"/api/v1/items/{video_id}/content", "/api/v1/status"):
        async with library.node.client.get(path, headers=headers) as resp:
            assert resp.status == 401, path
            assert resp.content_type == "application/json"
            text = await resp.text()
            assert_json_error(await resp.json(), "unauthorized")
            assert library.video["title"] not in text and library.video["content_hash"] not in text


async def test_read_only_token_reads_but_cannot_change(library: Library) -> None:
    node = library.node
    created = await node.api("POST", "/api/v1/tokens", json={"name": "viewer", "admin": False})
    assert created["admin"] is False and created["token"].startswith("pn_")
    viewer = {"Authorization": f"Bearer {created['token']}"}
    video_id = library.video["id"]

    async with node.client.get("/api/v1/items", headers=viewer) as resp:
        assert resp.status == 200
        assert {i["id"] for i in (await resp.json())["items"]} >= {video_id}
    async with node.client.get(f"/api/v1/items/{video_id}/content", headers={**viewer, "Range": "bytes=0-9"}) as resp:
        assert resp.status == 206
        assert await resp.read() == library.video_bytes[:10]

    forbidden = [
        ("POST", "/api/v1/items", {"paths": [str(library.media)]}),
        ("DELETE", f"/api/v1/items/{video_id}", None),
        ("PATCH", f"/api/v1/items/{video_id}", {"title": "mine now"}),
        ("POST", "/api/v1/tokens", {"name": "escalate", "admin": True}),
    ]
    for method, path, body in forbidden:
        async with node.client.request(method, path, json=body, headers=viewer) as resp:
            assert resp.status == 403, (method, path)
            assert_json_error(await resp.json(), "forbidden")
    # Nothing changed.
    item = await node.api("GET", f"/api/v1/items/{video_id}")
    assert item["title"] == library.video["title"]
    assert len((await node.api("GET", "/api/v1/items"))["items"]) == 4


# -- metadata, health, identity --------------------------------------------------------


async def test_item_metadata(library: Library) -> None:
    video = library.video
    item = await library.node.api("GET", f"/api/v1/items/{video['id']}")
    assert item.pop("views") == 0  # metadata adds the view total to what `add` reported
    assert item == video
    assert item["id"] == video["id"] and item["title"] == "Spider-Man Homecoming"
    assert item["node"] == library.node.identity.node_id
    assert item["size"] == len(library.video_bytes)
    assert item["content_url"] == library.content_url(video)
    assert item["mime"] == "video/mp4" and item["kind"] == "video"


async def test_healthz_needs_no_credentials(node: RunningNode) -> None:
    async with node.client.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_node_document_is_public_and_matches_the_identity(node: RunningNode) -> None:
    async with node.client.get("/federation/v1/node") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["node_id"] == node.identity.node_id
    assert doc["name"] == "alice"
    assert doc["url"] == f"http://127.0.0.1:{node.client.port}"
    assert doc["version"] == __version__
    raw = b64u_decode(doc["public_key"])
    assert len(raw) == 32
    assert raw == node.identity.public.public_key
    assert node_id_from_public_key(raw) == doc["node_id"]
    assert "=" not in doc["public_key"] and "+" not in doc["public_key"] and "/" not in doc["public_key"]


# -- large files stream, they are not loaded ------------------------------------------


def write_big_file(path: Path) -> str:
    """64 MiB where every 8 bytes hold their own index: a misplaced chunk changes the hash."""
    digest = hashlib.sha256()
    words = CHUNK // 8
    with path.open("wb") as fh:
        for i in range(BIG_SIZE // CHUNK):
            chunk = b"".join(n.to_bytes(8, "little") for n in range(i * words, (i + 1) * words))
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


async def test_large_file_streams_in_chunks_without_loading_it(node: RunningNode, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    expected = write_big_file(big)
    report = await node.api("POST", "/api/v1/items", json={"paths": [str(big)]})
    item = report["added"][0]
    assert item["size"] == BIG_SIZE

    tracemalloc.start()
    try:
        digest = hashlib.sha256()
        received = 0
        async with node.client.get(item["content_url"], headers=node.auth) as resp:
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) == BIG_SIZE
            async for chunk in resp.content.iter_chunked(CHUNK):
                digest.update(chunk)
                received += len(chunk)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == BIG_SIZE
    assert digest.hexdigest() == expected
    # Server and client share this process: a handler that read the file would show a 64 MiB peak.
    assert peak < 16 * 1024 * 1024, f"peak {peak} bytes while streaming"

    # A range deep inside the file, across a chunk boundary, is the right slice.
    start = 40 * CHUNK - 12
    async with node.client.get(
        item["content_url"], headers={**node.auth, "Range": f"bytes={start}-{start + 23}"}
    ) as resp:
        assert resp.status == 206
        body = await resp.read()
    with big.open("rb") as fh:
        fh.seek(start)
        assert body == fh.read(24)
    assert int.from_bytes(body[4:12], "little") == (start + 4) // 8


async def test_item_urls_are_revalidated_not_cached_forever(library: Library) -> None:
    """An item's file can change in place (a watched folder), so its URL must not be immutable."""
    status, headers, _ = await fetch(library.node, library.content_url(library.video))
    assert status == 200
    assert headers["Cache-Control"] == "private, no-cache"
    again, _, body = await fetch(library.node, library.content_url(library.video), {"If-None-Match": headers["ETag"]})
    assert (again, body) == (304, b"")


async def test_a_type_sent_as_a_download_is_named_after_its_item(library: Library, tmp_path: Path) -> None:
    """Types a browser may not render from the node are downloads: saved under the item's title, not
    "content". Media stay inline."""
    doc = tmp_path / "q3.pdf"
    doc.write_bytes(b"%PDF-1.4 not really\n")
    report = await library.node.api("POST", "/api/v1/items", json={"paths": [str(doc)], "title": "Quarterly Report"})
    item = report["added"][0]
    status, headers, body = await fetch(library.node, library.content_url(item))
    assert (status, body) == (200, doc.read_bytes())
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == 'attachment; filename="Quarterly Report.pdf"'
    status, headers, _ = await fetch(library.node, library.content_url(library.video), {"Range": "bytes=0-0"})
    assert status == 206
    assert "Content-Disposition" not in headers
