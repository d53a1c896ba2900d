"""Resumable browser uploads: a tus 1.0 server (core, creation, creation-with-upload,
checksum, expiration, termination).

Written here rather than taken from ``aiohttp-tus`` (last released 2022,
without the checksum and expiration extensions). Bodies stream to a file in
the store's ``uploads/`` folder, never into memory; each upload has one writer
at a time (a second concurrent PATCH gets 409 and cannot corrupt the file).

The hot path, per PATCH: aiohttp's chunks are copied as they arrive into one
of two reused 1 MiB buffers; a full buffer goes to a worker thread, which
writes it (``pwrite``), asks the disk to start on it and feeds it to the
hashers: the tus checksum of the chunk if the client sent one, and the BLAKE3
of the file and of each manifest block, so that the finished upload enters the
store by fsync and rename alone, without being read again. While one buffer
is written the other fills. Each PATCH ends with one ``fdatasync`` before its
offset is recorded: an acknowledged offset survives a power cut.

Invariant: the partial file holds at least ``offset`` valid bytes. Anything
past the offset (a PATCH cut before its offset was recorded) is cut off when
the upload is next written; a file shorter than the offset (only if the disk
lost acknowledged writes) moves the offset back. The incremental hash lives
in memory; after a restart, or whenever it does not cover exactly the bytes on
disk, the finished file is hashed again: slower, never wrong.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from node.blobs import BlobStore, HashMark, StreamHasher, pwrite_all, start_writeback
from node.service import ContentManager, check_visibility
from node.store import CmaStore
from priv_network.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PrivNetworkError,
)
from priv_network.http import principal_of

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,checksum,expiration,termination"
CHECKSUMS: dict[str, Callable[[], Any]] = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
MAX_METADATA = 4096
UPLOADS_PATH = "/api/v1/uploads"
# Bytes handed to the worker thread at once, from one of two reused buffers. Measured
# (bench/upload.py, node CPU per GiB): 1 MiB is the best; 2 and 4 MiB cost about twice
# as much (the copy into the page cache slows down), 256-512 KiB a little more (more
# thread hand-offs).
WRITE_BATCH = 1024 * 1024
SPARE_BUFFERS = 2  # one PATCH's pair stays allocated between PATCHes: 2 MiB


class ChecksumMismatch(PrivNetworkError):
    status = 460
    code = "checksum_mismatch"


class UnsupportedMediaType(PrivNetworkError):
    status = 415
    code = "unsupported_media_type"


class PreconditionFailed(PrivNetworkError):
    status = 412
    code = "unsupported_tus_version"


class Gone(PrivNetworkError):
    status = 410
    code = "gone"


class _BodyCut(Exception):
    """The client hung up before sending the whole body."""


class _ShortFile(Exception):
    """The partial file is shorter than the recorded offset."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def parse_metadata(header: str | None) -> dict[str, str]:
    if not header:
        return {}
    if len(header) > MAX_METADATA:
        raise InvalidInput(f"Upload-Metadata is longer than {MAX_METADATA} bytes")
    out: dict[str, str] = {}
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if not key or len(parts) > 2 or not key.isascii() or key in out:
            raise InvalidInput("Upload-Metadata must be comma-separated 'key base64value' pairs")
        try:
            out[key] = base64.b64decode(parts[1], validate=True).decode("utf-8") if len(parts) == 2 else ""
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidInput(f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text") from None
    return out


def _int_header(request: web.Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise InvalidInput(f"{name} must be a non-negative whole number")
    return int(raw)


def _write_and_hash(fd: int, data: memoryview, offset: int, hashers: Sequence[Any]) -> None:
    """Worker thread: write ``data`` at ``offset`` (resuming short writes), then hash it.

    The written range is handed to the disk at once (a hint, not a wait), so the
    PATCH's closing fdatasync finds little left to write. Hashing right after the
    write reads the bytes while they are still in the CPU's cache; BLAKE3 and
    hashlib release the GIL, so the event loop keeps receiving meanwhile.
    """
    pwrite_all(fd, [data], offset)
    start_writeback(fd, offset, len(data))
    for hasher in hashers:
        hasher.update(data)


class _Spool:
    """Hands one PATCH body to a worker thread through two reused buffers: one fills while
    the other is written and hashed, so receiving, writing and hashing overlap.

    Copying each chunk into a buffer costs one memcpy of cache-hot bytes; holding on to
    aiohttp's chunks instead (no copy) kept megabytes of short-lived allocations in
    flight, which the C allocator returned to the kernel and faulted in again: measured,
    a third of the node's CPU per GiB (bench/upload.py, perf).
    """

    def __init__(
        self,
        executor: Executor,
        fd: int,
        offset: int,
        hashers: Sequence[Any],
        buffers: Sequence[bytearray],
    ) -> None:
        self._executor = executor
        self._fd = fd
        self._offset = offset
        self._hashers = hashers
        self._views = [memoryview(b) for b in buffers]
        self._current = 0
        self._fill = 0
        self.submitted = 0
        self.job: asyncio.Future[None] | None = None

    @property
    def received(self) -> int:
        return self.submitted + self._fill

    async def add(self, data: bytes) -> None:
        src = memoryview(data)
        while src:
            buf = self._views[self._current]
            take = min(len(src), len(buf) - self._fill)
            buf[self._fill : self._fill + take] = src[:take]
            self._fill += take
            src = src[take:]
            if self._fill == len(buf):
                await self._flush()

    async def _flush(self) -> None:
        if self.job is not None:  # it used the other buffer, the one to fill next
            await self.job
        data = self._views[self._current][: self._fill]
        self.job = asyncio.get_running_loop().run_in_executor(
            self._executor,
            _write_and_hash,
            self._fd,
            data,
            self._offset + self.submitted,
            self._hashers,
        )
        self.submitted += self._fill
        self._fill = 0
        self._current ^= 1

    async def finish(self) -> None:
        """Write what is left and wait until every byte is written and hashed."""
        if self._fill:
            await self._flush()
        if self.job is not None:
            await self.job
            self.job = None

    async def settle(self) -> None:
        """Wait for the worker without raising: before the file is cut back or the buffers reused."""
        if self.job is not None:
            await asyncio.wait({self.job})
            self.job = None


def _open_at(path: Path, offset: int) -> int:
    """Open the partial file for writing at ``offset``; see the module's invariant."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        raise Gone("this upload's partial file is missing; start the upload again") from None
    try:
        size = os.fstat(fd).st_size
        if size > offset:  # a PATCH cut before it recorded its offset
            os.ftruncate(fd, offset)
        elif size < offset:
            raise _ShortFile(size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Uploads:
    def __init__(
        self,
        *,
        store: CmaStore,
        blobs: BlobStore,
        cma: ContentManager,
        executor: Executor,
        max_size: int,
        expiry: float,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._cma = cma
        self._executor = executor
        self.max_size = max_size
        self.expiry = expiry
        self._locks: dict[str, asyncio.Lock] = {}
        # BLAKE3 state of each upload's bytes [0, hasher.size), kept between its PATCHes.
        self._hashers: dict[str, StreamHasher] = {}
        self._spare: list[bytearray] = []  # write buffers kept for the next PATCH (see _Spool)

    def path(self, upload_id: str) -> Path:
        return self._blobs.upload_dir / f"{upload_id}.part"

    async def _run(self, fn: Any, *args: Any) -> Any:
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread goes on regardless: let it finish before the caller truncates or closes its fd.
            await asyncio.wait({future})
            raise

    async def create(self, owner: str, length: int, metadata: dict[str, str], *, admin: bool = True) -> dict[str, Any]:
        if length > self.max_size:
            raise PayloadTooLarge(f"the file is {length} bytes; uploads may be at most {self.max_size} bytes")
        free = await self._run(self._blobs.free_bytes)
        if length > free - self._blobs.min_free:
            raise InsufficientStorage(f"not enough free disk for {length} bytes ({free} bytes free)")
        visibility = check_visibility(metadata.get("visibility", "private"))
        if visibility != "private" and not admin:
            raise Forbidden("only the node's owners choose who sees an item; upload it as private")
        upload_id = secrets.token_hex(16)
        now = time.time()
        row = {
            "id": upload_id,
            "owner": owner,
            "length": length,
            "offset": 0,
            "metadata": json.dumps(metadata),
            "created_at": now,
            "expires_at": now + self.expiry,
            "state": "uploading",
            "item_id": None,
            "duplicate": False,
            "error": None,
        }
        await self._run(self._touch, self.path(upload_id))
        await self._store.insert_upload(row)
        return row

    @staticmethod
    def _touch(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.close(fd)

    async def get(self, upload_id: str, owner: str) -> dict[str, Any]:
        row = await self._store.get_upload(upload_id) if len(upload_id) == 32 else None
        if row is None or row["owner"] != owner:
            raise NotFound("no such upload")
        if row["state"] == "uploading" and row["expires_at"] < time.time():
            raise Gone("this upload expired; start it again")
        return row

    async def append(
        self,
        upload_id: str,
        owner: str,
        offset: int,
        body: aiohttp.StreamReader,
        checksum: tuple[str, bytes] | None,
        *,
        declared: int | None = None,
        keep_partial: bool = True,
    ) -> dict[str, Any]:
        """Write one PATCH body at ``offset``; ``declared`` is its Content-Length if known.

        A body cut without a checksum keeps what arrived (tus allows it) unless
        ``keep_partial`` is False (creation-with-upload: the client never learnt the URL).
        """
        lock = self._locks.setdefault(upload_id, asyncio.Lock())
        if lock.locked():
            raise Conflict("another client is writing this upload right now")
        async with lock:
            row = await self.get(upload_id, owner)
            if row["state"] != "uploading":
                raise Forbidden("this upload is already complete")
            if offset != row["offset"]:
                raise Conflict(f"Upload-Offset {offset} does not match the upload's offset {row['offset']}")
            if declared is not None and declared > row["length"] - offset:
                raise InvalidInput("the body goes past Upload-Length")
            hasher = self._hashers.get(upload_id)
            if hasher is None or hasher.size != offset:
                # After a restart, or bytes past the offset that were dropped: hash the whole file at the end.
                hasher = StreamHasher(self._blobs.block_size) if offset == 0 else None
                self._hashers.pop(upload_id, None)
                if hasher is not None:
                    self._hashers[upload_id] = hasher
            written = await self._receive(row, body, checksum, hasher, keep_partial=keep_partial)
            values: dict[str, Any] = {"offset": offset + written, "expires_at": time.time() + self.expiry}
            await self._store.update_upload(upload_id, values)
            row.update(values)
            if row["offset"] == row["length"]:
                row.update(await self._complete(row))
            return row

    async def _receive(
        self,
        row: dict[str, Any],
        body: aiohttp.StreamReader,
        checksum: tuple[str, bytes] | None,
        hasher: StreamHasher | None,
        *,
        keep_partial: bool,
    ) -> int:
        """Stream the body to the file, hashing it on the way; returns the bytes kept.

        On any failure the file goes back to ``position`` bytes and the hash to
        where it stood, so the upload is exactly as before this PATCH.
        """
        upload_id = row["id"]
        position = int(row["offset"])
        room = int(row["length"]) - position
        try:
            fd = await self._run(_open_at, self.path(upload_id), position)
        except _ShortFile as short:
            await self._store.update_upload(upload_id, {"offset": short.size})
            self._hashers.pop(upload_id, None)
            raise Conflict(
                f"the node has only {short.size} bytes of this upload (lost in a crash); resume from there"
            ) from None
        digest = CHECKSUMS[checksum[0]]() if checksum else None
        hashers = [h for h in (digest, hasher) if h is not None]
        mark: HashMark | None = hasher.mark() if hasher is not None else None
        buffers = [self._spare.pop() if self._spare else bytearray(WRITE_BATCH) for _ in range(2)]
        spool = _Spool(self._executor, fd, position, hashers, buffers)
        try:
            try:
                # readchunk hands over each chunk as it came off the socket (readany would join them).
                # Not iter_chunks: on a body-less request it iterates aiohttp's shared EMPTY_PAYLOAD,
                # whose state makes a second iteration endless (aiohttp#7616, #11397); at_eof() does not.
                while not body.at_eof():
                    data, _ = await body.readchunk()
                    if spool.received + len(data) > room:
                        raise InvalidInput("the body goes past Upload-Length")
                    await spool.add(data)
            except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
                if digest is not None or not keep_partial:
                    raise _BodyCut from None
                log.info("upload %s cut after %d bytes: %s", upload_id, spool.received, type(exc).__name__)
            await spool.finish()
            if digest is not None and checksum is not None and digest.digest() != checksum[1]:
                raise ChecksumMismatch("the chunk's checksum does not match; it was discarded, send it again")
            if spool.submitted:  # the offset about to be acknowledged must survive a power cut
                await self._run(os.fdatasync, fd)
        except BaseException as exc:
            # Cancelled (client gone under handler_cancellation, or shutdown), refused or failed: the
            # offset is not advanced, so drop this PATCH's bytes and hash too, once the worker is done.
            await spool.settle()
            await self._run(os.ftruncate, fd, position)
            if hasher is not None and mark is not None:
                hasher.rewind(mark)
            if isinstance(exc, _BodyCut):
                raise BadRequest("the connection was cut; the partial chunk was discarded") from None
            if isinstance(exc, OSError):
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise InsufficientStorage(f"the disk filled up: {exc.strerror}") from None
                raise PrivNetworkError(f"cannot write the upload: {exc.strerror}") from None
            raise
        finally:
            await self._run(os.close, fd)
            if spool.job is None:  # settled: the worker holds no buffer any more
                self._spare.extend(buffers[: SPARE_BUFFERS - len(self._spare)])
        return spool.submitted

    async def _complete(self, row: dict[str, Any]) -> dict[str, Any]:
        metadata = json.loads(row["metadata"])
        name = metadata.get("filename") or metadata.get("name") or "upload"
        hasher = self._hashers.pop(row["id"], None)
        if hasher is not None and hasher.size != row["length"]:
            hasher = None
        try:
            item, created = await self._cma.ingest_stored_file(
                self.path(row["id"]),
                name=os.path.basename(name)[:200] or "upload",
                title=metadata.get("title") or None,
                visibility=metadata.get("visibility", "private"),
                source="upload",
                hashed=hasher,
            )
        except PrivNetworkError as exc:
            await self._store.update_upload(row["id"], {"state": "failed", "error": exc.message})
            raise
        values = {"state": "complete", "item_id": item.id, "duplicate": not created}
        await self._store.update_upload(row["id"], values)
        self._locks.pop(row["id"], None)
        log.info("upload %s complete: item %s%s", row["id"], item.id, " (already stored)" if not created else "")
        return values

    async def terminate(self, upload_id: str, owner: str) -> None:
        row = await self.get(upload_id, owner)
        lock = self._locks.get(upload_id)
        if lock is not None and lock.locked():
            raise Conflict("the upload is being written; try again")
        await self._forget(upload_id, file_too=row["state"] == "uploading")

    async def discard(self, upload_id: str) -> None:
        """Remove an upload whose creation request failed: its client never learnt its URL."""
        await self._forget(upload_id, file_too=True)

    async def _forget(self, upload_id: str, *, file_too: bool) -> None:
        if file_too:
            await self._run(lambda: self.path(upload_id).unlink(missing_ok=True))
        await self._store.delete_upload(upload_id)
        self._hashers.pop(upload_id, None)
        self._locks.pop(upload_id, None)

    async def sweep(self) -> int:
        """Remove unfinished uploads past their expiry."""
        stale = await self._store.expired_uploads(time.time())
        for upload_id in stale:
            if (lock := self._locks.get(upload_id)) is not None and lock.locked():
                continue
            await self._forget(upload_id, file_too=True)
        if stale:
            log.info("swept %d expired uploads", len(stale))
        return len(stale)


def _tus_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    headers.update(extra or {})
    return headers


async def tus_resumable_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare``: tus 1.0 wants Tus-Resumable on every response of its endpoints,
    errors included, even those a middleware gives before a handler runs (401, 404, 405)."""
    if request.path.startswith(UPLOADS_PATH):
        response.headers.setdefault("Tus-Resumable", TUS_VERSION)


class UploadsApi:
    """The tus endpoints at /api/v1/uploads/ (authenticated like the rest of /api/v1)."""

    def __init__(self, uploads: Uploads) -> None:
        self.uploads = uploads

    @staticmethod
    def principal_name(request: web.Request) -> str:
        return principal_of(request).name

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.options(f"{UPLOADS_PATH}/", self.options),
            web.options(UPLOADS_PATH, self.options),
            web.post(f"{UPLOADS_PATH}/", self.create),
            web.post(UPLOADS_PATH, self.create),
            web.head(UPLOADS_PATH + "/{id}", self.head),
            web.get(UPLOADS_PATH + "/{id}", self.info, allow_head=False),
            web.patch(UPLOADS_PATH + "/{id}", self.patch),
            web.delete(UPLOADS_PATH + "/{id}", self.delete),
        ]

    def _check_version(self, request: web.Request) -> None:
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            raise PreconditionFailed("this server speaks tus 1.0.0 (send Tus-Resumable: 1.0.0)")

    def _expires(self, row: dict[str, Any]) -> str:
        return formatdate(row["expires_at"], usegmt=True)

    async def options(self, request: web.Request) -> web.Response:
        self.principal_name(request)
        return web.Response(
            status=204,
            headers=_tus_headers(
                {
                    "Tus-Version": TUS_VERSION,
                    "Tus-Extension": TUS_EXTENSIONS,
                    "Tus-Max-Size": str(self.uploads.max_size),
                    "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
                }
            ),
        )

    async def create(self, request: web.Request) -> web.Response:
        owner = self.principal_name(request)
        admin = principal_of(request).admin
        self._check_version(request)
        if request.headers.get("Upload-Defer-Length"):
            raise InvalidInput("Upload-Defer-Length is not supported: send Upload-Length")
        length = _int_header(request, "Upload-Length")
        if length is None:
            raise InvalidInput("Upload-Length is required")
        metadata = parse_metadata(request.headers.get("Upload-Metadata"))
        with_body = request.content_type == "application/offset+octet-stream" and (
            request.content_length is None or request.content_length > 0
        )
        checksum = self._checksum(request) if with_body else None
        row = await self.uploads.create(owner, length, metadata, admin=admin)
        location = f"{UPLOADS_PATH}/{row['id']}"
        if with_body:
            try:
                row = await self.uploads.append(
                    row["id"],
                    owner,
                    0,
                    request.content,
                    checksum,
                    declared=request.content_length,
                    keep_partial=False,
                )
            except BaseException:
                # The client gets no Location, so nothing could ever resume this upload: remove it all.
                await asyncio.shield(self.uploads.discard(row["id"]))
                raise
        headers = {"Location": location, "Upload-Offset": str(row["offset"]), "Upload-Expires": self._expires(row)}
        if row.get("item_id"):
            headers["X-Item-Id"] = row["item_id"]
        return web.Response(status=201, headers=_tus_headers(headers))

    async def head(self, request: web.Request) -> web.Response:
        owner = self.principal_name(request)
        row = await self.uploads.get(request.match_info["id"], owner)
        headers = {
            "Upload-Offset": str(row["offset"]),
            "Upload-Length": str(row["length"]),
            "Upload-Expires": self._expires(row),
        }
        if row["item_id"]:
            headers["X-Item-Id"] = row["item_id"]
        return web.Response(status=200, headers=_tus_headers(headers))

    async def info(self, request: web.Request) -> web.Response:
        owner = self.principal_name(request)
        row = await self.uploads.get(request.match_info["id"], owner)
        return web.json_response(
            {
                "id": row["id"],
                "length": row["length"],
                "offset": row["offset"],
                "state": row["state"],
                "item_id": row["item_id"],
                "duplicate": bool(row["duplicate"]),
                "expires_at": row["expires_at"],
                "metadata": json.loads(row["metadata"]),
                "error": row["error"],
            }
        )

    def _checksum(self, request: web.Request) -> tuple[str, bytes] | None:
        raw = request.headers.get("Upload-Checksum")
        if raw is None:
            return None
        algo, _, value = raw.strip().partition(" ")
        if algo not in CHECKSUMS:
            raise InvalidInput(f"checksum algorithm must be one of {', '.join(CHECKSUMS)}")
        try:
            return algo, base64.b64decode(value, validate=True)
        except binascii.Error:
            raise InvalidInput("Upload-Checksum value is not base64") from None

    async def patch(self, request: web.Request) -> web.Response:
        owner = self.principal_name(request)
        self._check_version(request)
        if request.content_type != "application/offset+octet-stream":
            raise UnsupportedMediaType("PATCH bodies must be Content-Type: application/offset+octet-stream")
        offset = _int_header(request, "Upload-Offset")
        if offset is None:
            raise InvalidInput("Upload-Offset is required")
        row = await self.uploads.append(
            request.match_info["id"],
            owner,
            offset,
            request.content,
            self._checksum(request),
            declared=request.content_length,
        )
        headers = {"Upload-Offset": str(row["offset"]), "Upload-Expires": self._expires(row)}
        if row.get("item_id"):
            headers["X-Item-Id"] = row["item_id"]
        return web.Response(status=204, headers=_tus_headers(headers))

    async def delete(self, request: web.Request) -> web.Response:
        owner = self.principal_name(request)
        self._check_version(request)
        await self.uploads.terminate(request.match_info["id"], owner)
        return web.Response(status=204, headers=_tus_headers())
