"""The content store on disk: content-addressed, written atomically.

Layout under the store folder::

    blobs/ab/cd/abcd...        one file per distinct content (BLAKE3 hex)
    posters/abcd....jpg        poster frame of a video
    tmp/                       files being written; swept at start-up

A file enters ``blobs/`` only by ``os.replace`` of a fully written and
fsynced temp file, so a crash or a full disk never leaves a half file under
its final name. Everything here is blocking and runs in worker threads.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

from blake3 import blake3

from priv_network.errors import Conflict, InsufficientStorage, InvalidInput, PrivNetworkError
from priv_network.manifest import HASH_LEN, block_hash, manifest_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredBlob:
    content_hash: str
    size: int
    block_size: int
    manifest: bytes
    manifest_hash: str
    already_stored: bool


# Dirty pages are handed to the disk every this many bytes while a file is written.
WRITEBACK_WINDOW = 32 * 1024 * 1024


class HashMark(NamedTuple):
    """Where a StreamHasher stood (copies of its states), to rewind to."""

    size: int
    whole: blake3
    block: blake3
    fill: int
    manifest_len: int


class StreamHasher:
    """BLAKE3 of a byte stream and of each of its fixed-size blocks, fed in pieces of any size.

    Gives the content hash and manifest that ingest and adopt compute, so a file
    hashed as it arrives (an upload) is not read again when it enters the store.
    ``mark`` and ``rewind`` drop bytes fed since the mark (a chunk that failed
    its checksum), without hashing anything again.
    """

    __slots__ = ("_block", "_fill", "_manifest", "_whole", "block_size", "size")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.size = 0
        self._whole = blake3()
        self._block = blake3()
        self._fill = 0
        self._manifest = bytearray()

    def update(self, data: bytes | memoryview) -> None:
        self._whole.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self.block_size - self._fill)
            self._block.update(view[:take] if take < len(view) else view)
            self._fill += take
            view = view[take:]
            if self._fill == self.block_size:
                self._manifest += self._block.digest()
                self._block = blake3()
                self._fill = 0

    def mark(self) -> HashMark:
        return HashMark(self.size, self._whole.copy(), self._block.copy(), self._fill, len(self._manifest))

    def rewind(self, mark: HashMark) -> None:
        self.size, self._whole, self._block, self._fill = mark.size, mark.whole, mark.block, mark.fill
        del self._manifest[mark.manifest_len :]

    def result(self) -> tuple[str, bytes]:
        """(content hash, manifest) of everything fed so far."""
        manifest = bytes(self._manifest)
        if self._fill:
            manifest += self._block.digest()
        return self._whole.hexdigest(), manifest


class BlobStore:
    # Start the writeback of an ingest's copy every this many bytes (0: leave it all to the
    # final fsync). bench/ingest.py --compare-writeback: ratio to sha256 1.02 with, 0.56
    # without (6 of 6 rounds better, each variant in each place of the order).
    ingest_writeback = WRITEBACK_WINDOW

    def __init__(self, root: Path, block_size: int, min_free: int) -> None:
        self.root = root
        self.block_size = block_size
        self.min_free = min_free
        self.blob_dir = root / "blobs"
        self.poster_dir = root / "posters"
        self.tmp_dir = root / "tmp"
        self.pin_dir = root / "pins"
        self.upload_dir = root / "uploads"

    def prepare(self) -> None:
        for d in (self.blob_dir, self.poster_dir, self.tmp_dir, self.pin_dir, self.upload_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Anything left in tmp/ is from a crash mid-write: never valid.
        for leftover in self.tmp_dir.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)

    def blob_path(self, content_hash: str) -> Path:
        return self.blob_dir / content_hash[:2] / content_hash[2:4] / content_hash

    def poster_path(self, content_hash: str) -> Path:
        return self.poster_dir / f"{content_hash}.jpg"

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def _check_space(self, size: int) -> None:
        free = self.free_bytes()
        if free - size < self.min_free:
            raise InsufficientStorage(
                f"not enough free disk for {size} bytes: {free} free, "
                f"{self.min_free} kept in reserve ([store] min_free)"
            )

    def ingest(self, source: Path) -> StoredBlob:
        """Copy ``source`` into the store, hashing whole file and blocks in one pass."""
        try:
            src = os.open(source, os.O_RDONLY)
        except OSError as exc:
            raise InvalidInput(f"{source}: {exc.strerror}") from None
        try:
            size = os.fstat(src).st_size
            self._check_space(size)
            tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
            try:
                result = self._copy_and_hash(src, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        finally:
            os.close(src)
        final = self.blob_path(result.content_hash)
        if final.exists():
            tmp.unlink(missing_ok=True)
            return StoredBlob(**{**result.__dict__, "already_stored": True})
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return result

    def _copy_and_hash(self, src: int, tmp: Path) -> StoredBlob:
        """Read, hash (BLAKE3 of the whole file and of each block) and write in one pass.

        One loop and one buffer: BLAKE3 releases the GIL and runs at several GB/s,
        so the write dominates. A writer thread fed through queues was measured
        slower and costlier here (bench/ingest.py, docs/benchmarks.md).
        """
        block_size = self.block_size
        whole = blake3()
        blocks: list[bytes] = []
        buf = bytearray(block_size)
        view = memoryview(buf)
        size = flushed = 0
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            while True:
                n = _read_full(src, view)
                if n == 0:
                    break
                chunk = view[:n]
                whole.update(chunk)
                blocks.append(blake3(chunk).digest())
                _write_all(out, chunk)
                size += n
                if self.ingest_writeback and size - flushed >= self.ingest_writeback:
                    start_writeback(out, flushed, size - flushed)
                    flushed = size
                if n < block_size:
                    break
            os.fsync(out)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise InsufficientStorage(f"the disk filled up while storing: {exc.strerror}") from None
            raise PrivNetworkError(f"cannot store file: {exc.strerror}") from None
        finally:
            os.close(out)
        manifest = b"".join(blocks)
        return StoredBlob(
            content_hash=whole.hexdigest(),
            size=size,
            block_size=block_size,
            manifest=manifest,
            manifest_hash=manifest_hash(block_size, size, manifest),
            already_stored=False,
        )

    def hash_in_place(self, path: Path) -> StoredBlob:
        """Hash a file that stays where it is (referenced, not copied)."""
        whole = blake3()
        blocks: list[bytes] = []
        size = 0
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(self.block_size):
                    whole.update(chunk)
                    blocks.append(block_hash(chunk))
                    size += len(chunk)
        except OSError as exc:
            raise InvalidInput(f"{path}: {exc.strerror}") from None
        manifest = b"".join(blocks)
        return StoredBlob(
            content_hash=whole.hexdigest(),
            size=size,
            block_size=self.block_size,
            manifest=manifest,
            manifest_hash=manifest_hash(self.block_size, size, manifest),
            already_stored=self.blob_path(whole.hexdigest()).exists(),
        )

    def adopt(self, path: Path) -> StoredBlob:
        """Take a complete file already in the store's folder (same file system): hash it, then rename it in."""
        hashed = StreamHasher(self.block_size)
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
            while chunk := fh.read(self.block_size):
                hashed.update(chunk)
        return self._move_in(path, *hashed.result(), size=hashed.size)

    def adopt_hashed(self, path: Path, hashed: StreamHasher) -> StoredBlob:
        """As ``adopt``, for a file whose bytes were hashed as they were written: fsync, then rename in.

        The caller vouches that ``hashed`` saw exactly the file's bytes; a size that
        disagrees (the file changed behind its back) falls back to hashing the file.
        """
        if hashed.block_size != self.block_size:
            return self.adopt(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size != hashed.size:
                return self.adopt(path)
            os.fsync(fd)
        finally:
            os.close(fd)
        return self._move_in(path, *hashed.result(), size=hashed.size)

    def _move_in(self, path: Path, content_hash: str, manifest: bytes, *, size: int) -> StoredBlob:
        """Rename a synced, hashed file to its content address (or drop it: that content is stored)."""
        final = self.blob_path(content_hash)
        already = final.exists()
        if already:
            path.unlink(missing_ok=True)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, final)
            _fsync_dir(final.parent)
        return StoredBlob(
            content_hash=content_hash,
            size=size,
            block_size=self.block_size,
            manifest=manifest,
            manifest_hash=manifest_hash(self.block_size, size, manifest),
            already_stored=already,
        )

    def write_poster(self, content_hash: str, jpeg: bytes) -> None:
        final = self.poster_path(content_hash)
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.jpg"
        try:
            with open(tmp, "wb") as fh:
                fh.write(jpeg)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    # -- pinned copies: written block by block, verified, then committed --------
    def pin_part(self, content_hash: str) -> Path:
        return self.pin_dir / f"{content_hash}.part"

    def open_pin(self, content_hash: str, manifest: bytes, block_size: int, size: int) -> PinWriter:
        """Open the partial copy of a pin for a fetch, keeping only its verified prefix (see PinWriter)."""
        return PinWriter(self, content_hash, manifest, block_size, size)

    def delete_pin_files(self, content_hash: str, *, blob_too: bool) -> None:
        self.pin_part(content_hash).unlink(missing_ok=True)
        if blob_too:
            self.blob_path(content_hash).unlink(missing_ok=True)

    def delete(self, content_hash: str) -> None:
        self.blob_path(content_hash).unlink(missing_ok=True)
        self.poster_path(content_hash).unlink(missing_ok=True)


_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """glibc's sync_file_range(2), or None where there is none (not Linux, no glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", fn)


_SYNC_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of a file to disk now, without waiting for it.

    The final fsync then finds most of the file already on disk instead of
    writing all of it at the end: the disk works while the next blocks are
    read and hashed (bench/ingest.py measured a 1 GiB ingest ~1.8x faster
    on this machine's virtual disk). Only a hint: a failure is ignored, and
    fsync still decides durability.
    """
    if _SYNC_RANGE is not None:
        _SYNC_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


# O_DIRECT wants offsets, lengths and memory aligned to the device's logical block (512 or 4096).
DIRECT_ALIGN = 4096


def open_direct(path: Path, block_size: int) -> int | None:
    """A second descriptor of ``path`` that writes past the page cache (O_DIRECT), or None.

    A pin writes a large file once, checks it and fsyncs it; nothing reads
    it back soon. Through the page cache every block first needs fresh
    pages, which is cheap on an idle host but cost up to 2 s of kernel time
    per GiB on this project's virtual machine (its freed memory goes back to
    the host, and taking it again faults page by page), and it evicts what
    the node streams. Direct writes cost about 0.07 CPU-s per GiB and the
    final fsync finds nothing left to write (docs/benchmarks.md, section 7).
    None where the block size cannot be aligned or the filesystem refuses
    O_DIRECT (tmpfs before Linux 6.6, some FUSE filesystems): the buffered
    path then does the job, as it does from the first direct write a
    filesystem refuses with EINVAL after taking the open.
    """
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or block_size % DIRECT_ALIGN:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError:
        return None


# A block as a fetch hands it over: one buffer, or the network chunks it arrived in, in order.
BlockData = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]


class PinWriter:
    """The partial copy of a pin (``pins/HASH.part``), open for the length of a fetch.

    Opening it checks the blocks already on disk against the manifest and
    cuts the file after the last good one, so a fetch resumes from its
    verified prefix after a cut or a restart. Blocks are then appended in
    order, each checked against the manifest before a byte of it is written,
    and the whole-file BLAKE3 is fed as they go: committing the copy fsyncs
    and renames it, without reading the file again. ``sync``, called now and
    then from another thread while blocks keep coming, hands what is written
    to the disk, so the final fsync is short.

    Every method blocks (run it in a worker thread); a lock keeps them one at
    a time (``sync`` only holds it to start), so ``close`` waits for a write
    still under way.
    """

    def __init__(self, store: BlobStore, content_hash: str, manifest: bytes, block_size: int, size: int) -> None:
        self.content_hash = content_hash
        self.size = size
        self._store = store
        self._manifest = manifest
        self._block_size = block_size
        self._whole = blake3()
        self._lock = threading.Lock()
        self._path = store.pin_part(content_hash)
        self._fd: int | None = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            self.verified = self._check_prefix(self._fd)
            os.ftruncate(self._fd, self.verified)
        except BaseException:
            os.close(self._fd)
            raise
        self._sync_error: OSError | None = None
        self._flushed = self.verified  # writeback started up to here
        # Whole blocks go through an aligned buffer to an O_DIRECT descriptor where it can be had.
        self._direct = open_direct(self._path, block_size)
        self._buffer = mmap.mmap(-1, block_size) if self._direct is not None else None

    def _expected(self, index: int) -> bytes:
        return self._manifest[index * HASH_LEN : (index + 1) * HASH_LEN]

    def _check_prefix(self, fd: int) -> int:
        good = 0
        buf = bytearray(self._block_size)
        while good < self.size:
            length = min(self._block_size, self.size - good)
            view = memoryview(buf)[:length]
            if _read_full(fd, view) < length or block_hash(view) != self._expected(good // self._block_size):
                break
            self._whole.update(view)
            good += length
        return good

    def append(self, index: int, data: BlockData) -> bool:
        """Write block ``index`` (one buffer, or its parts in order) after the verified prefix.

        False, and nothing written, if it does not match the manifest.
        """
        parts = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        with self._lock:
            if self._fd is None:
                raise PrivNetworkError("the pinned copy was closed")
            offset = index * self._block_size
            if offset != self.verified:
                raise Conflict(f"pin blocks must arrive in order (expected offset {self.verified})")
            length = sum(memoryview(p).nbytes for p in parts)
            # A whole block goes through the aligned buffer to the O_DIRECT descriptor, if there is one.
            buffer = self._gather(parts) if self._direct is not None and length == self._block_size else None
            h = blake3()
            for part in parts if buffer is None else [buffer]:
                h.update(part)
            if h.digest() != self._expected(index):
                return False
            try:
                if buffer is None:  # the short last block, or no direct I/O here
                    pwrite_all(self._fd, parts, offset)
                else:
                    self._write_direct(buffer, offset)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise InsufficientStorage(f"the disk filled up while pinning: {exc.strerror}") from None
                raise PrivNetworkError(f"cannot write the pinned copy: {exc.strerror}") from None
            for part in parts if buffer is None else [buffer]:
                self._whole.update(part)
            self.verified = offset + length
            if self._direct is None and self.verified - self._flushed >= WRITEBACK_WINDOW:
                # As ingest does: the disk starts on these pages now, so a pin does not pile up
                # dirty pages until the kernel throttles its writes (or its final fsync waits).
                start_writeback(self._fd, self._flushed, self.verified - self._flushed)
                self._flushed = self.verified
            return True

    def _gather(self, parts: list[bytes | bytearray | memoryview]) -> mmap.mmap:
        """Copy a whole block's parts into the aligned buffer (page-aligned: it is an mmap)."""
        assert self._buffer is not None
        at = 0
        for part in parts:
            n = memoryview(part).nbytes
            self._buffer[at : at + n] = part
            at += n
        return self._buffer

    def _write_direct(self, buffer: mmap.mmap, offset: int) -> None:
        """Write a whole block past the page cache; a short write ends through the buffered fd."""
        assert self._direct is not None and self._fd is not None
        try:
            n = os.pwrite(self._direct, buffer, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # The filesystem took the O_DIRECT open but refuses the write (some FUSE and network
            # filesystems do): this block and the rest go through the page cache.
            log.info("pinned copy %s: the filesystem refuses direct writes; using the page cache", self._path.name)
            os.close(self._direct)
            self._direct = None
            n = 0
        if n < self._block_size:
            pwrite_all(self._fd, [buffer[n:]], offset + n)

    def sync(self) -> None:
        """Write what was appended so far to the disk (fdatasync), while appends go on.

        It syncs a duplicate of the descriptor, outside the lock. An error is
        kept for ``commit``: the kernel reports a writeback error only once.
        """
        with self._lock:
            if self._fd is None:
                return
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self._sync_error = exc
        finally:
            os.close(fd)

    def commit(self) -> None:
        """Check the whole copy against its content hash, then move it into the store (and close it)."""
        with self._lock:
            if self._fd is None:
                raise PrivNetworkError("the pinned copy was closed")
            if self.verified != self.size:
                raise PrivNetworkError(f"the pinned copy is incomplete ({self.verified} of {self.size} bytes)")
            fd, self._fd = self._fd, None
            try:
                if self._whole.hexdigest() != self.content_hash:
                    self._path.unlink(missing_ok=True)
                    self.verified = 0
                    raise PrivNetworkError("the pinned copy does not match its content hash; it was discarded")
                if self._sync_error is not None:
                    raise self._sync_error
                os.fsync(fd)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientStorage(f"the disk filled up while pinning: {exc.strerror}") from None
                raise PrivNetworkError(f"cannot write the pinned copy to disk: {exc.strerror}") from None
            finally:
                os.close(fd)
                self._close_direct()
        final = self._store.blob_path(self.content_hash)
        if final.exists():
            self._path.unlink(missing_ok=True)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, final)
        _fsync_dir(final.parent)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._close_direct()

    def _close_direct(self) -> None:
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None


def pwrite_all(fd: int, parts: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
    """Write ``parts`` one after another at ``offset``, resuming short writes."""
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        n = os.pwritev(fd, views[:512], offset)  # IOV_MAX is 1024 on Linux
        offset += n
        while views and n >= views[0].nbytes:
            n -= views[0].nbytes
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def _read_full(fd: int, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            break
        got += n
    return got


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
