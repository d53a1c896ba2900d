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

import errno
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

from priv_network.errors import InsufficientStorage, InvalidInput, PrivNetworkError
from priv_network.manifest import HASH_LEN, block_hash, manifest_hash


@dataclass(frozen=True)
class StoredBlob:
    content_hash: str
    size: int
    block_size: int
    manifest: bytes
    manifest_hash: str
    already_stored: bool


class BlobStore:
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
        size = 0
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
        whole = blake3()
        blocks: list[bytes] = []
        size = 0
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
            while chunk := fh.read(self.block_size):
                whole.update(chunk)
                blocks.append(block_hash(chunk))
                size += len(chunk)
        manifest = b"".join(blocks)
        content_hash = whole.hexdigest()
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

    def verified_prefix(self, content_hash: str, manifest: bytes, block_size: int, size: int) -> int:
        """Bytes at the start of the partial copy that match the manifest; the rest is cut off."""
        part = self.pin_part(content_hash)
        if not part.exists():
            return 0
        good = 0
        with open(part, "r+b") as fh:
            index = 0
            while good < size:
                block = fh.read(min(block_size, size - good))
                expected = manifest[index * HASH_LEN : (index + 1) * HASH_LEN]
                if len(block) < min(block_size, size - good) or block_hash(block) != expected:
                    break
                good += len(block)
                index += 1
            fh.truncate(good)
        return good

    def write_pin_block(self, content_hash: str, offset: int, data: bytes) -> None:
        part = self.pin_part(content_hash)
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o640)
            try:
                os.lseek(fd, offset, os.SEEK_SET)
                _write_all(fd, memoryview(data))
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise InsufficientStorage(f"the disk filled up while pinning: {exc.strerror}") from None
            raise PrivNetworkError(f"cannot write the pinned copy: {exc.strerror}") from None

    def commit_pin(self, content_hash: str, size: int) -> None:
        """Check the whole copy against its content hash, then move it into the store."""
        part = self.pin_part(content_hash)
        whole = blake3()
        total = 0
        with open(part, "rb") as fh:
            os.fsync(fh.fileno())
            while chunk := fh.read(4 * 1024 * 1024):
                whole.update(chunk)
                total += len(chunk)
        if total != size or whole.hexdigest() != content_hash:
            part.unlink(missing_ok=True)
            raise PrivNetworkError("the pinned copy does not match its content hash; it was discarded")
        final = self.blob_path(content_hash)
        if final.exists():
            part.unlink(missing_ok=True)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        _fsync_dir(final.parent)

    def delete_pin_files(self, content_hash: str, *, blob_too: bool) -> None:
        self.pin_part(content_hash).unlink(missing_ok=True)
        if blob_too:
            self.blob_path(content_hash).unlink(missing_ok=True)

    def delete(self, content_hash: str) -> None:
        self.blob_path(content_hash).unlink(missing_ok=True)
        self.poster_path(content_hash).unlink(missing_ok=True)


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
