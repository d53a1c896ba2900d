"""How an upload's bytes reach the store: hashed as they arrive, rolled back exactly when a
chunk is refused, and hashed again from the file whenever the node cannot vouch for its
in-memory hash (a restart, a crash that left bytes past the offset or lost some)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from blake3 import blake3

from node.blobs import BlobStore, StreamHasher
from priv_network.manifest import block_hash, manifest_hash
from priv_network.server import create_app
from tests.conftest import NodeFactory, RunningNode, free_port
from tests.node.test_uploads import (
    MiB,
    RawPatch,
    b64,
    new_upload,
    offset_of,
    part_file,
    patch,
    path_of,
    wait_idle,
)

BLOCK = 64 * 1024


def expected_hashes(data: bytes, block_size: int = BLOCK) -> tuple[str, str]:
    """(content hash, manifest hash) as docs/protocol.md defines them."""
    manifest = b"".join(block_hash(data[i : i + block_size]) for i in range(0, len(data), block_size))
    return blake3(data).hexdigest(), manifest_hash(block_size, len(data), manifest)


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK, 7 * BLOCK + 12345])
def test_stream_hasher_matches_hashing_the_file(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    rng = random.Random(size)
    hasher = StreamHasher(BLOCK)
    at = 0
    while at < size:  # pieces of every size, across block boundaries
        step = rng.choice([1, 100, BLOCK - 1, BLOCK, BLOCK + 7, 3 * BLOCK])
        hasher.update(data[at : at + step])
        at += step
    source = tmp_path / "file"
    source.write_bytes(data)
    blobs = BlobStore(tmp_path / "store", BLOCK, 0)
    blobs.prepare()
    in_place = blobs.hash_in_place(source)
    content_hash, manifest = hasher.result()
    assert hasher.size == size
    assert (content_hash, manifest) == (in_place.content_hash, in_place.manifest)

    stored = blobs.adopt_hashed(source, hasher)
    assert (stored.content_hash, stored.manifest_hash, stored.size) == (
        in_place.content_hash,
        in_place.manifest_hash,
        size,
    )
    assert not source.exists()
    assert blobs.blob_path(content_hash).read_bytes() == data


def test_stream_hasher_rewinds_to_a_mark() -> None:
    good, bad, rest = os.urandom(BLOCK + 10), os.urandom(2 * BLOCK + 3), os.urandom(BLOCK // 2)
    hasher = StreamHasher(BLOCK)
    hasher.update(good)
    mark = hasher.mark()
    hasher.update(bad)
    hasher.rewind(mark)
    hasher.update(rest)
    whole = StreamHasher(BLOCK)
    whole.update(good + rest)
    assert hasher.result() == whole.result()
    assert hasher.size == len(good + rest)


def test_adopt_hashed_checks_the_size_and_falls_back_to_hashing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "store", BLOCK, 0)
    blobs.prepare()
    source = blobs.upload_dir / "x.part"
    source.write_bytes(b"the real bytes")
    stale = StreamHasher(BLOCK)
    stale.update(b"other")
    stored = blobs.adopt_hashed(source, stale)
    assert stored.content_hash == blake3(b"the real bytes").hexdigest()


def spy_adopt(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record each time a finished upload is hashed again from its file."""
    calls: list[Path] = []
    original = BlobStore.adopt

    def adopt(self: BlobStore, path: Path) -> Any:
        calls.append(path)
        return original(self, path)

    monkeypatch.setattr(BlobStore, "adopt", adopt)
    return calls


async def item_of(node: RunningNode, headers: Any) -> dict[str, Any]:
    item: dict[str, Any] = await node.api("GET", f"/api/v1/items/{headers['X-Item-Id']}")
    return item


async def test_upload_is_hashed_as_it_arrives_through_refusals_and_cuts(
    node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    reread = spy_adopt(monkeypatch)
    node = await node_factory(store={"block_size": "64KiB"})
    data = os.urandom(9 * MiB + 4321)
    url = await new_upload(node, len(data))
    # Chunks that straddle blocks; one refused for its checksum, one cut (kept, no checksum).
    status, _, _ = await patch(node, url, 0, data[: 3 * MiB + 1])
    assert status == 204
    wrong = "sha1 " + b64(hashlib.sha1(b"nope").digest())
    status, _, _ = await patch(node, url, 3 * MiB + 1, data[3 * MiB + 1 : 6 * MiB], {"Upload-Checksum": wrong})
    assert status == 460
    assert await offset_of(node, url) == 3 * MiB + 1

    part = part_file(node, url)
    chunk = data[3 * MiB + 1 : 8 * MiB]
    cut = RawPatch(node, url, 3 * MiB + 1, len(chunk))
    await cut.start(chunk[: 4 * MiB + 5])
    await wait_for_size(part, 7 * MiB)
    await cut.cut()
    await wait_idle(node, url)
    kept = await offset_of(node, url)
    assert part.read_bytes() == data[:kept]

    good = "sha256 " + b64(hashlib.sha256(data[kept:]).digest())
    status, headers, _ = await patch(node, url, kept, data[kept:], {"Upload-Checksum": good})
    assert status == 204
    item = await item_of(node, headers)
    assert (item["content_hash"], item["manifest_hash"]) == expected_hashes(data)
    assert item["block_size"] == BLOCK
    assert reread == []  # entered the store by rename alone


async def wait_for_size(path: Path, size: int, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while path.stat().st_size < size:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{path.name} never reached {size} bytes")
        await asyncio.sleep(0.02)


async def restart(node: RunningNode) -> RunningNode:
    """Stop the node's server and start a new one on the same data: nothing kept in memory."""
    await node.client.close()
    client = TestClient(TestServer(create_app(node.config, node.identity), host="127.0.0.1", port=free_port()))
    await client.start_server()
    return RunningNode(config=node.config, identity=node.identity, token=node.token, client=client)


async def test_after_a_restart_the_finished_file_is_hashed_again(
    node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    reread = spy_adopt(monkeypatch)
    node = await node_factory(store={"block_size": "64KiB"})
    data = os.urandom(3 * MiB + 17)
    url = await new_upload(node, len(data))
    status, _, _ = await patch(node, url, 0, data[:MiB])
    assert status == 204

    node = await restart(node)
    try:
        part = part_file(node, url)
        # A crash after bytes were written but before their offset was recorded: they are cut off.
        with part.open("ab") as fh:
            fh.write(b"never acknowledged")
        assert await offset_of(node, url) == MiB
        status, _, _ = await patch(node, url, MiB, data[MiB : 2 * MiB])
        assert status == 204
        assert part.read_bytes() == data[: 2 * MiB]

        # A disk that lost acknowledged bytes: the offset moves back and the client resumes from HEAD.
        os.truncate(part, MiB + 100)
        status, _, body = await patch(node, url, 2 * MiB, data[2 * MiB :])
        assert status == 409
        assert "resume" in body["error"]["message"]
        offset = await offset_of(node, url)
        assert offset == MiB + 100
        status, headers, _ = await patch(node, url, offset, data[offset:])
        assert status == 204
        item = await item_of(node, headers)
        assert (item["content_hash"], item["manifest_hash"]) == expected_hashes(data)
        assert len(reread) == 1  # the node could not vouch for its hash: it read the file again
        async with node.client.get(item["content_url"], headers=node.auth) as resp:
            assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(data).digest()
    finally:
        await node.client.close()


async def test_two_uploads_at_once_keep_their_own_hashes(node_factory: NodeFactory) -> None:
    node = await node_factory(store={"block_size": "64KiB"})
    one, two = os.urandom(2 * MiB + 1), os.urandom(2 * MiB + 2)
    url_one, url_two = await new_upload(node, len(one)), await new_upload(node, len(two))

    async def send(url: str, data: bytes) -> Any:
        headers: Any = None
        for at in range(0, len(data), 700_000):
            status, headers, _ = await patch(node, url, at, data[at : at + 700_000])
            assert status == 204
        return headers

    first, second = await asyncio.gather(send(url_one, one), send(url_two, two))
    assert (await item_of(node, first))["content_hash"] == expected_hashes(one)[0]
    assert (await item_of(node, second))["content_hash"] == expected_hashes(two)[0]
    assert path_of(url_one) != path_of(url_two)
