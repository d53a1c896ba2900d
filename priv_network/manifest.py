"""Block manifests: how any node proves a byte came from the owner's file.

A file is cut into fixed-size blocks (the last one may be shorter); the
manifest is the concatenation of each block's 32-byte BLAKE3 hash. Its
name, the manifest hash, is BLAKE3 over the block size and the file size
(8 bytes big-endian each) followed by the manifest, and travels in the
owner's signed catalog entry.
"""

from __future__ import annotations

from blake3 import blake3

HASH_LEN = 32


def manifest_hash(block_size: int, size: int, manifest: bytes) -> str:
    h = blake3()
    h.update(block_size.to_bytes(8, "big"))
    h.update(size.to_bytes(8, "big"))
    h.update(manifest)
    return h.hexdigest()


def block_count(size: int, block_size: int) -> int:
    return (size + block_size - 1) // block_size


def block_hash(data: bytes | memoryview) -> bytes:
    return blake3(data).digest()
