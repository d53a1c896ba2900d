"""A bench-local prototype of the ingest change docs/benchmarks.md recommends.

``BlobStore._copy_and_hash`` today reads and hashes in the calling thread and
hands each 1 MiB block to a writer thread through two queues and a ring of 8
buffers. Measured here (bench/ingest.py), that pipeline costs about twice
the CPU of doing the same work in one thread (1.3-2.0 s vs 0.6-0.9 s of CPU
per GiB) and takes longer, not shorter: BLAKE3 runs at ~6 GB/s per pass with
AVX-512, so there is little hashing to overlap, while the hand-offs, the
cross-core trips of every buffer and two threads competing with the rest of
a busy 2-core machine cost more than they save.

The prototype does the same work in one loop with one buffer: read a block,
BLAKE3 it into the whole-file hash and on its own for the manifest, write it;
then fsync, exactly as today (same error mapping, same atomic rename in
``ingest``). Used by ``bench/ingest.py --prototype``; nothing under node/ is
edited.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from blake3 import blake3

from node import blobs as node_blobs
from node.blobs import BlobStore, StoredBlob, manifest_hash
from priv_network.errors import InsufficientStorage, PrivNetworkError


class SerialBlobStore(BlobStore):
    def _copy_and_hash(self, src: int, tmp: Path) -> StoredBlob:
        block_size = self.block_size
        whole = blake3()
        blocks: list[bytes] = []
        size = 0
        buf = bytearray(block_size)
        view = memoryview(buf)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            while True:
                n = node_blobs._read_full(src, view)
                if n == 0:
                    break
                chunk = view[:n]
                whole.update(chunk)
                blocks.append(blake3(chunk).digest())
                node_blobs._write_all(out, chunk)
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
