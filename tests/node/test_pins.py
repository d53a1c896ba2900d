"""The partial copy of a pin on disk (``PinWriter``), without a network.

Blocks are checked against the manifest before a byte is written; a resume
keeps only the verified prefix of what is on disk; the whole-file hash is
fed as blocks arrive (starting from that prefix), so the commit fsyncs and
renames and still refuses a copy that is not the content it names.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import secrets
from pathlib import Path

import pytest
from blake3 import blake3

import node.blobs
from node.blobs import BlobStore, PinWriter
from priv_network.errors import Conflict, InsufficientStorage, PrivNetworkError
from priv_network.manifest import block_hash

BS = 64 * 1024
SIZE = 3 * BS + 1234  # three whole blocks and a short last one


def new_store(tmp_path: Path) -> BlobStore:
    blobs = BlobStore(tmp_path / "store", BS, 0)
    blobs.prepare()
    return blobs


@pytest.fixture(params=["direct", "buffered"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BlobStore:
    """A store whose pins write whole blocks past the page cache (O_DIRECT), or all through it.

    The buffered path is what a filesystem without O_DIRECT gets.
    """
    blobs = new_store(tmp_path)
    if request.param == "buffered":
        monkeypatch.setattr(node.blobs, "open_direct", lambda path, block_size: None)
    else:  # every filesystem this suite runs on (ext4, tmpfs since Linux 6.6) takes O_DIRECT
        probe = blobs.pin_part("probe")
        probe.touch()
        fd = node.blobs.open_direct(probe, BS)
        assert fd is not None, f"no O_DIRECT on {probe.parent}: the direct path would go untested"
        os.close(fd)
        probe.unlink()
    return blobs


def manifest_of(data: bytes) -> bytes:
    return b"".join(block_hash(data[i : i + BS]) for i in range(0, len(data), BS))


def block(data: bytes, index: int) -> bytes:
    return data[index * BS : (index + 1) * BS]


def chunks(data: bytes, *cuts: int) -> list[memoryview]:
    """``data`` as the network chunks it may arrive in (cut at ``cuts``)."""
    view = memoryview(data)
    edges = [0, *cuts, len(data)]
    return [view[a:b] for a, b in itertools.pairwise(edges)]


def open_pin(store: BlobStore, data: bytes, content_hash: str | None = None) -> PinWriter:
    h = content_hash or blake3(data).hexdigest()
    return store.open_pin(h, manifest_of(data), BS, len(data))


def test_blocks_are_written_in_order_and_committed_into_the_store(store: BlobStore) -> None:
    data = secrets.token_bytes(SIZE)
    h = blake3(data).hexdigest()
    writer = open_pin(store, data)
    assert writer.verified == 0
    # A block may come whole, or as the chunks it arrived in (nothing is joined).
    assert writer.append(0, block(data, 0))
    assert writer.append(1, chunks(block(data, 1), 1, 5000, 40_000))
    assert writer.append(2, [block(data, 2)])
    assert writer.append(3, chunks(block(data, 3), 1000))
    assert writer.verified == SIZE
    assert store.pin_part(h).read_bytes() == data
    writer.commit()
    assert store.blob_path(h).read_bytes() == data
    assert not store.pin_part(h).exists()


def test_a_block_that_does_not_match_is_refused_and_nothing_of_it_written(store: BlobStore) -> None:
    data = secrets.token_bytes(SIZE)
    h = blake3(data).hexdigest()
    writer = open_pin(store, data)
    assert writer.append(0, block(data, 0))
    bad = bytearray(block(data, 1))
    bad[100] ^= 0xFF
    assert writer.append(1, bytes(bad)) is False
    assert writer.append(1, block(data, 1)[:-1]) is False  # short
    assert writer.verified == BS
    assert store.pin_part(h).read_bytes() == data[:BS]
    # Out of order: a bug of the caller, not bad data.
    with pytest.raises(Conflict, match="in order"):
        writer.append(2, block(data, 2))
    writer.close()
    with pytest.raises(PrivNetworkError, match="closed"):
        writer.append(1, block(data, 1))


def test_a_resume_keeps_the_verified_prefix_and_commits_the_whole(store: BlobStore) -> None:
    data = secrets.token_bytes(SIZE)
    h = blake3(data).hexdigest()
    # A cut transfer left two good blocks, then half a block of garbage.
    store.pin_part(h).write_bytes(data[: 2 * BS] + os.urandom(BS // 2))
    writer = open_pin(store, data)
    assert writer.verified == 2 * BS
    assert store.pin_part(h).stat().st_size == 2 * BS
    assert writer.append(2, block(data, 2))
    assert writer.append(3, block(data, 3))
    # The whole-file hash covers the prefix read back from disk too.
    writer.commit()
    assert store.blob_path(h).read_bytes() == data


def test_a_complete_copy_on_disk_is_checked_when_opened(store: BlobStore) -> None:
    data = secrets.token_bytes(SIZE)
    h = blake3(data).hexdigest()
    store.pin_part(h).write_bytes(data)
    writer = open_pin(store, data)
    assert writer.verified == SIZE
    writer.commit()
    assert store.blob_path(h).read_bytes() == data


def test_a_copy_that_is_not_its_content_is_discarded(store: BlobStore) -> None:
    """Every block matches the manifest, but the manifest is not that of the content hash."""
    data = secrets.token_bytes(SIZE)
    wrong = blake3(b"something else").hexdigest()
    writer = open_pin(store, data, content_hash=wrong)
    for index in range(4):
        assert writer.append(index, block(data, index))
    with pytest.raises(PrivNetworkError, match="does not match its content hash"):
        writer.commit()
    assert not store.pin_part(wrong).exists()
    assert not store.blob_path(wrong).exists()


def test_an_unfinished_copy_is_not_committed(store: BlobStore) -> None:
    data = secrets.token_bytes(SIZE)
    h = blake3(data).hexdigest()
    writer = open_pin(store, data)
    assert writer.append(0, block(data, 0))
    with pytest.raises(PrivNetworkError, match="incomplete"):
        writer.commit()
    assert not store.blob_path(h).exists()
    # What it has stays, to be resumed.
    assert writer.append(1, block(data, 1))
    writer.close()
    assert store.pin_part(h).read_bytes() == data[: 2 * BS]


def test_a_disk_that_fills_mid_block_leaves_a_resumable_copy(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = secrets.token_bytes(SIZE)
    h = blake3(data).hexdigest()
    writer = open_pin(store, data)
    assert writer.append(0, block(data, 0))
    real_pwritev, real_pwrite = os.pwritev, os.pwrite

    def fills_up(fd: int, buffers: list[memoryview], offset: int) -> int:
        real_pwritev(fd, [buffers[0][:1000]], offset)  # part of the block reaches the disk, then no more
        raise OSError(errno.ENOSPC, "No space left on device")

    def fills_up_direct(fd: int, buffer: memoryview, offset: int) -> int:
        real_pwrite(fd, memoryview(buffer)[:4096], offset)  # an aligned part reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", fills_up)
    monkeypatch.setattr(os, "pwrite", fills_up_direct)
    with pytest.raises(InsufficientStorage, match="disk filled up"):
        writer.append(1, block(data, 1))
    assert writer.verified == BS
    writer.close()
    monkeypatch.undo()
    # Reopened (after space was freed): the half-written block is cut off, the rest follows.
    writer = open_pin(store, data)
    assert writer.verified == BS
    assert store.pin_part(h).stat().st_size == BS
    for index in (1, 2, 3):
        assert writer.append(index, block(data, index))
    writer.commit()
    assert store.blob_path(h).read_bytes() == data


def test_a_sync_under_way_does_not_hold_up_appends_and_its_error_stops_the_commit(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = secrets.token_bytes(SIZE)
    h = blake3(data).hexdigest()
    writer = open_pin(store, data)
    assert writer.append(0, block(data, 0))
    writer.sync()
    assert writer.append(1, block(data, 1))

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    writer.sync()  # the error is kept: the kernel reports it once
    monkeypatch.undo()
    for index in (2, 3):
        assert writer.append(index, block(data, index))
    with pytest.raises(PrivNetworkError, match="cannot write the pinned copy to disk"):
        writer.commit()
    assert not store.blob_path(h).exists()
    assert store.pin_part(h).exists()  # checked again block by block when the pin resumes


def test_whole_blocks_go_past_the_page_cache_and_the_last_short_one_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = new_store(tmp_path)
    data = secrets.token_bytes(SIZE)
    h = blake3(data).hexdigest()
    direct_writes: list[tuple[int, int]] = []
    real_pwrite = os.pwrite

    def spy(fd: int, buffer: memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            direct_writes.append((offset, memoryview(buffer).nbytes))
        return real_pwrite(fd, buffer, offset)

    monkeypatch.setattr(os, "pwrite", spy)
    writer = open_pin(blobs, data)
    for index in range(4):
        assert writer.append(index, chunks(block(data, index), 1000, 5000) if index < 3 else block(data, index))
    writer.commit()
    assert direct_writes == [(0, BS), (BS, BS), (2 * BS, BS)]
    assert blobs.blob_path(h).read_bytes() == data


def test_a_filesystem_that_refuses_direct_writes_gets_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some FUSE and network filesystems take the O_DIRECT open, then refuse the write (EINVAL)."""
    blobs = new_store(tmp_path)
    data = secrets.token_bytes(SIZE)
    h = blake3(data).hexdigest()
    real_pwrite = os.pwrite
    refused: list[int] = []

    def no_direct(fd: int, buffer: memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, buffer, offset)

    monkeypatch.setattr(os, "pwrite", no_direct)
    writer = open_pin(blobs, data)
    for index in range(4):
        assert writer.append(index, chunks(block(data, index), 777))
    writer.commit()
    assert refused == [0]  # tried once, then never again
    assert blobs.blob_path(h).read_bytes() == data
