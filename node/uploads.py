"""Resumable browser uploads: a tus 1.0 server (core, creation, creation-with-upload,
checksum, expiration, termination).

Written here rather than taken from ``aiohttp-tus`` (last released 2022,
without the checksum and expiration extensions). Bodies stream to a file in
the store's ``uploads/`` folder, never into memory; a finished upload is
hashed and renamed into the content store through the CMA (no second copy),
probed and recorded like ``add``. Each upload has one writer at a time: a
second concurrent PATCH gets 409 and cannot corrupt the file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from node.blobs import BlobStore
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
WRITE_CHUNK = 4 * 1024 * 1024


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


def _pwritev_from(fd: int, chunks: list[bytes], skip: int, offset: int) -> int:
    """pwritev of ``chunks`` without their first ``skip`` bytes, at ``offset``; returns bytes written."""
    views: list[memoryview] = []
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        views.append(memoryview(chunk)[skip:])
        skip = 0
    return os.pwritev(fd, views[:1024], offset)


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
    ) -> dict[str, Any]:
        lock = self._locks.setdefault(upload_id, asyncio.Lock())
        if lock.locked():
            raise Conflict("another client is writing this upload right now")
        async with lock:
            row = await self.get(upload_id, owner)
            if row["state"] != "uploading":
                raise Forbidden("this upload is already complete")
            if offset != row["offset"]:
                raise Conflict(f"Upload-Offset {offset} does not match the upload's offset {row['offset']}")
            hasher = CHECKSUMS[checksum[0]]() if checksum else None
            written = await self._receive(upload_id, row, body, hasher)
            new_offset = offset + written
            if hasher is not None and checksum is not None and hasher.digest() != checksum[1]:
                await self._run(os.truncate, self.path(upload_id), offset)
                raise ChecksumMismatch("the chunk's checksum does not match; it was discarded, send it again")
            values: dict[str, Any] = {"offset": new_offset, "expires_at": time.time() + self.expiry}
            await self._store.update_upload(upload_id, values)
            row.update(values)
            if new_offset == row["length"]:
                row.update(await self._complete(row))
            return row

    async def _receive(self, upload_id: str, row: dict[str, Any], body: aiohttp.StreamReader, hasher: Any) -> int:
        """Stream the body to the file; on a cut without checksum keep what arrived (tus allows it)."""
        room = int(row["length"]) - int(row["offset"])
        fd = await self._run(os.open, str(self.path(upload_id)), os.O_WRONLY)
        position = int(row["offset"])
        written = 0
        pending: list[bytes] = []  # chunks as received, written with one pwritev (no copies in Python)
        pending_size = 0

        async def flush() -> None:
            nonlocal written, pending_size
            offset = position + written
            done = 0
            while done < pending_size:  # pwritev may write less than asked
                done += await self._run(_pwritev_from, fd, pending, done, offset + done)
            written += pending_size
            pending.clear()
            pending_size = 0

        try:
            try:
                async for chunk in body.iter_chunked(1024 * 1024):
                    if written + pending_size + len(chunk) > room:
                        raise InvalidInput("the body goes past Upload-Length")
                    if hasher is not None:
                        hasher.update(chunk)
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= WRITE_CHUNK:
                        await flush()
            except (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError) as exc:
                if hasher is not None:
                    await self._run(os.ftruncate, fd, position)
                    raise BadRequest("the connection was cut; the partial chunk was discarded") from None
                log.info("upload %s cut after %d bytes: %s", upload_id, written + pending_size, type(exc).__name__)
            if pending:
                await flush()
            await self._run(os.fsync, fd)
        except (InvalidInput, asyncio.CancelledError):
            # Cancelled (client gone under handler_cancellation, or shutdown): the offset was not
            # advanced, so drop this PATCH's bytes too and keep the file exactly as long as the offset.
            await self._run(os.ftruncate, fd, position)
            raise
        except OSError as exc:
            await self._run(os.ftruncate, fd, position)
            raise InsufficientStorage(f"cannot write the upload: {exc.strerror}") from None
        finally:
            await self._run(os.close, fd)
        if hasher is None and written:
            await self._store.update_upload(upload_id, {"offset": position + written})
        return written

    async def _complete(self, row: dict[str, Any]) -> dict[str, Any]:
        metadata = json.loads(row["metadata"])
        name = metadata.get("filename") or metadata.get("name") or "upload"
        try:
            item, created = await self._cma.ingest_stored_file(
                self.path(row["id"]),
                name=os.path.basename(name)[:200] or "upload",
                title=metadata.get("title") or None,
                visibility=metadata.get("visibility", "private"),
                source="upload",
            )
        except PrivNetworkError as exc:
            await self._store.update_upload(row["id"], {"state": "failed", "error": exc.message})
            raise
        values = {"state": "complete", "item_id": item.id, "duplicate": not created}
        await self._store.update_upload(row["id"], values)
        log.info("upload %s complete: item %s%s", row["id"], item.id, " (already stored)" if not created else "")
        return values

    async def terminate(self, upload_id: str, owner: str) -> None:
        row = await self.get(upload_id, owner)
        lock = self._locks.get(upload_id)
        if lock is not None and lock.locked():
            raise Conflict("the upload is being written; try again")
        if row["state"] == "uploading":
            await self._run(lambda: self.path(upload_id).unlink(missing_ok=True))
        await self._store.delete_upload(upload_id)
        self._locks.pop(upload_id, None)

    async def sweep(self) -> int:
        """Remove unfinished uploads past their expiry."""
        stale = await self._store.expired_uploads(time.time())
        for upload_id in stale:
            if (lock := self._locks.get(upload_id)) is not None and lock.locked():
                continue
            await self._run(lambda u=upload_id: self.path(u).unlink(missing_ok=True))
            await self._store.delete_upload(upload_id)
            self._locks.pop(upload_id, None)
        if stale:
            log.info("swept %d expired uploads", len(stale))
        return len(stale)


def _tus_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    headers.update(extra or {})
    return headers


class UploadsApi:
    """The tus endpoints at /api/v1/uploads/ (authenticated like the rest of /api/v1)."""

    def __init__(self, uploads: Uploads) -> None:
        self.uploads = uploads

    @staticmethod
    def principal_name(request: web.Request) -> str:
        return principal_of(request).name

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.options("/api/v1/uploads/", self.options),
            web.options("/api/v1/uploads", self.options),
            web.post("/api/v1/uploads/", self.create),
            web.post("/api/v1/uploads", self.create),
            web.head("/api/v1/uploads/{id}", self.head),
            web.get("/api/v1/uploads/{id}", self.info, allow_head=False),
            web.patch("/api/v1/uploads/{id}", self.patch),
            web.delete("/api/v1/uploads/{id}", self.delete),
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
        row = await self.uploads.create(owner, length, metadata, admin=admin)
        location = f"/api/v1/uploads/{row['id']}"
        if request.content_type == "application/offset+octet-stream" and (request.content_length or 0) > 0:
            row = await self.uploads.append(row["id"], owner, 0, request.content, self._checksum(request))
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
            request.match_info["id"], owner, offset, request.content, self._checksum(request)
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
