"""node.serving: the kept-open file response, on a bare aiohttp app.

The item endpoints are covered end to end in test_content.py; these check
what the kept-open descriptors add: a replaced or deleted file is noticed,
an evicted file still finishes the response sending from it, nothing stays
open after close(), and the conditional-request rules of RFC 9110.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.serving import MAX_NAME, FileServe, OpenFiles, attachment, download_name

SIZE = 300_000


@dataclass
class Served:
    client: TestClient[web.Request, web.Application]
    files: OpenFiles
    root: Path

    def path(self, name: str) -> Path:
        return self.root / name


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    files = OpenFiles(size=2, revalidate_after=0.0)

    async def handler(request: web.Request) -> web.StreamResponse:
        return FileServe(tmp_path / request.match_info["name"], files, headers={"Content-Type": "video/mp4"})

    app = web.Application()
    app.router.add_get("/{name}", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Served(client, files, tmp_path)
    finally:
        await client.close()
        await files.close()


def write(path: Path, data: bytes) -> bytes:
    path.write_bytes(data)
    return data


def open_fds() -> set[str]:
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if _is_link(fd)}


def _is_link(fd: str) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return True


async def test_whole_file_and_ranges_with_validators(served: Served) -> None:
    data = write(served.path("a"), secrets.token_bytes(SIZE))
    resp = await served.client.get("/a")
    assert resp.status == 200
    assert await resp.read() == data
    etag = resp.headers["ETag"]
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Content-Type"] == "video/mp4"
    for spec, start, stop in [("bytes=0-0", 0, 1), ("bytes=1000-", 1000, SIZE), ("bytes=-10", SIZE - 10, SIZE)]:
        resp = await served.client.get("/a", headers={"Range": spec, "If-Range": etag})
        assert resp.status == 206, spec
        assert resp.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{SIZE}"
        assert await resp.read() == data[start:stop]


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "items=0-1", "bytes=9-2", "bytes = 0-1", "garbage"])
async def test_ranges_it_does_not_honour_get_the_whole_file(served: Served, spec: str) -> None:
    data = write(served.path("a"), secrets.token_bytes(SIZE))
    resp = await served.client.get("/a", headers={"Range": spec})
    assert resp.status == 200
    assert await resp.read() == data


async def test_range_past_the_end_is_416_with_the_size(served: Served) -> None:
    write(served.path("a"), secrets.token_bytes(SIZE))
    resp = await served.client.get("/a", headers={"Range": f"bytes={SIZE}-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{SIZE}"


async def test_conditional_requests(served: Served) -> None:
    write(served.path("a"), secrets.token_bytes(SIZE))
    first = await served.client.get("/a")
    await first.read()
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    past = formatdate(served.path("a").stat().st_mtime - 3600, usegmt=True)

    async def status(headers: dict[str, str]) -> int:
        resp = await served.client.get("/a", headers=headers)
        await resp.read()
        return resp.status

    assert await status({"If-None-Match": etag}) == 304
    assert await status({"If-None-Match": '"other"'}) == 200
    assert await status({"If-Modified-Since": modified}) == 304
    assert await status({"If-Modified-Since": past}) == 200
    assert await status({"If-Match": etag}) == 200
    assert await status({"If-Match": '"other"'}) == 412
    assert await status({"If-Unmodified-Since": past}) == 412
    # If-Range with a stale tag or an older date: the whole file, never a spliced range.
    assert await status({"Range": "bytes=0-9", "If-Range": '"stale"'}) == 200
    assert await status({"Range": "bytes=0-9", "If-Range": f"W/{etag}"}) == 200
    assert await status({"Range": "bytes=0-9", "If-Range": past}) == 200
    assert await status({"Range": "bytes=0-9", "If-Range": modified}) == 206


async def test_head_sends_headers_only(served: Served) -> None:
    write(served.path("a"), secrets.token_bytes(SIZE))
    resp = await served.client.head("/a")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(SIZE)
    assert await resp.read() == b""


async def test_missing_file_is_404_and_a_folder_is_not_served(served: Served) -> None:
    assert (await served.client.get("/nothing")).status == 404
    served.path("dir").mkdir()
    assert (await served.client.get("/dir")).status == 404


async def test_a_replaced_or_deleted_file_is_noticed(served: Served) -> None:
    path = served.path("a")
    write(path, b"first version")
    assert await (await served.client.get("/a")).read() == b"first version"
    # A file referenced in place, replaced by its owner (new inode, as editors and downloads do).
    tmp = served.path("a.new")
    write(tmp, b"second, longer version")
    tmp.replace(path)
    assert await (await served.client.get("/a")).read() == b"second, longer version"
    path.unlink()
    assert (await served.client.get("/a")).status == 404


async def test_an_evicted_file_finishes_the_response_sending_from_it(served: Served) -> None:
    big = write(served.path("big"), secrets.token_bytes(32 * 1024 * 1024))
    for name in ("b", "c"):
        write(served.path(name), name.encode())
    resp = await served.client.get("/big")
    assert resp.status == 200
    first = await resp.content.readexactly(1024)  # the response is now sending, and stalls on us
    for name in ("b", "c"):  # two more files push "big" out of the two-entry cache
        assert await (await served.client.get(f"/{name}")).read() == name.encode()
    rest = await resp.read()
    assert first + rest == big


async def test_close_releases_every_descriptor(served: Served) -> None:
    for name in ("a", "b"):
        write(served.path(name), secrets.token_bytes(1000))
        await (await served.client.get(f"/{name}")).read()
    held = {str(served.path(n)) for n in ("a", "b")}
    assert held <= open_fds()
    await served.files.close()
    assert not held & open_fds()


async def test_concurrent_ranges_share_one_descriptor(tmp_path: Path) -> None:
    data = write(tmp_path / "a", secrets.token_bytes(4 * 1024 * 1024))
    files = OpenFiles()

    async def handler(request: web.Request) -> web.StreamResponse:
        return FileServe(tmp_path / "a", files)

    app = web.Application()
    app.router.add_get("/a", handler)
    async with TestClient(TestServer(app)) as client:

        async def one(start: int) -> bytes:
            resp = await client.get("/a", headers={"Range": f"bytes={start}-{start + 65535}"})
            assert resp.status == 206
            return await resp.read()

        starts = [i * 65536 for i in range(0, 64, 3)]
        bodies = await asyncio.gather(*(one(s) for s in starts))
        assert all(body == data[s : s + 65536] for s, body in zip(starts, bodies, strict=True))
        assert sum(1 for fd in open_fds() if fd == str(tmp_path / "a")) == 1
    await files.close()


@pytest.mark.parametrize(
    ("title", "mime", "original", "name"),
    [
        ("Wedding Video", "application/octet-stream", "Wedding Video.bin", "Wedding Video.bin"),
        ("Summer", "video/x-matroska", "IMG_0001.MKV", "Summer.MKV"),  # the original file's extension
        ("Summer", "video/x-matroska", "", "Summer.mkv"),  # else one for the type
        ("Summer", "video/mp4", "no extension", "Summer.mp4"),
        ("Notes", "application/octet-stream", "notes", "Notes"),  # an unknown type gets none
        ("movie.mp4", "video/mp4", "movie.mp4", "movie.mp4"),  # not twice
        ("a/b\\c:d", "text/plain", "x.txt", "a_b_c_d.txt"),
        ("line\none\ttab\u202egpj.exe", "video/mp4", "x.mp4", "line one tab gpj.exe.mp4"),
        ("  ..hidden..  ", "audio/mpeg", "x.mp3", "hidden.mp3"),
        ("\x00\x01", "audio/mpeg", "Track 1.mp3", "Track 1.mp3"),  # nothing left of the title
        ("", "audio/mpeg", "", "download.mp3"),
        ("x" * 400, "video/mp4", "x.mp4", "x" * MAX_NAME + ".mp4"),
    ],
)
def test_download_names(title: str, mime: str, original: str, name: str) -> None:
    assert download_name(title, mime, original) == name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Wedding Video.bin", 'attachment; filename="Wedding Video.bin"'),
        (
            "Été à Zürich.mkv",
            "attachment; filename=\"Ete a Zurich.mkv\"; filename*=UTF-8''%C3%89t%C3%A9%20%C3%A0%20Z%C3%BCrich.mkv",
        ),
        ("日本語.mp4", "attachment; filename=\"download.mp4\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.mp4"),
        (
            'it\'s "quoted" 100%.txt',
            "attachment; filename=\"it_s _quoted_ 100_.txt\"; filename*=UTF-8''it%27s%20%22quoted%22%20100%25.txt",
        ),
    ],
)
def test_attachment_has_a_plain_fallback_and_the_exact_name(name: str, value: str) -> None:
    assert attachment(name) == value


async def test_body_sent_counts_the_bytes_of_the_body_only(tmp_path: Path) -> None:
    data = write(tmp_path / "a", secrets.token_bytes(SIZE))
    files = OpenFiles()
    sent: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = FileServe(tmp_path / "a", files)
        await response.prepare(request)  # sent inside the handler, as the counted endpoints do
        sent.append(response.body_sent)
        return response

    app = web.Application()
    app.router.add_get("/a", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/a")
        assert await resp.read() == data
        etag = resp.headers["ETag"]
        for method, headers in [
            ("HEAD", {}),
            ("GET", {"Range": "bytes=10-19"}),
            ("GET", {"If-None-Match": etag}),
            ("GET", {"Range": f"bytes={SIZE}-"}),
            ("HEAD", {"Range": "bytes=0-99"}),
        ]:
            async with client.request(method, "/a", headers=headers) as resp:
                await resp.read()
    await files.close()
    assert sent == [SIZE, 0, 10, 0, 0, 0]
