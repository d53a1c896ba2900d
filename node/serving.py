"""Serving stored files over HTTP: a response that keeps blob files open.

Blobs are content-addressed and never change once written, and the content
endpoints serve the same few files over and over (a player seeking through one
video sends a range request per seek). aiohttp's ``FileResponse`` opens, stats
and closes the file in the thread pool on every request: two hand-offs to a
worker thread and back, which on a busy two-core home server cost more than
sending a 1 MiB range. ``OpenFiles`` keeps the most recently served files open
instead; ``os.sendfile`` takes an explicit offset, so one descriptor serves any
number of concurrent ranges.

``FileServe`` implements what ``FileResponse`` does for us, with public aiohttp
API only: conditional requests (RFC 9110 section 13: If-Match,
If-Unmodified-Since, If-None-Match, If-Modified-Since), one byte range with
If-Range by strong entity tag or date (anything else gets the whole file with
200, as RFC 9110 section 14.2 allows; a range past the end gets 416), and the
body through ``os.sendfile``: straight away while the socket takes it, then
through ``loop.sendfile`` for the rest. ``body_sent`` says how much of the body
went out, also when the client hangs up half-way (to within ``send_piece``).
"""

from __future__ import annotations

import asyncio
import io
import mimetypes
import os
import re
import stat as stat_mod
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from priv_network.errors import RangeNotSatisfiable
from priv_network.ranges import ByteRange, parse_range

OPEN_FILES = 64
# How long an open file is used without checking that its path still names it. A blob
# never changes, but a file referenced in place (a watched folder or a Plex library)
# can be replaced by its owner; after this long the next request sees the new one.
REVALIDATE_AFTER = 2.0
# A response whose bytes are counted gives its body to loop.sendfile in pieces of this many
# bytes: when the client hangs up, what went out is then known to within one piece (loop.sendfile
# does not tell how much of a call it sent before failing). One stream at full speed through
# loopback runs about 5% slower in 4 MiB pieces than in one call, so uncounted responses (a
# member's own content URL) keep the one call.
SEND_PIECE = 4 * 1024 * 1024

# File names offered for downloads (Content-Disposition): at most this many characters before the
# extension; extensions for the types that mimetypes names oddly or not at all.
MAX_NAME = 150
_EXTENSIONS = {
    "video/x-matroska": ".mkv",
    "audio/ogg": ".ogg",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "video/mp2t": ".ts",
    "application/octet-stream": "",
}
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")
_NOT_IN_NAMES = frozenset('/\\:*?"<>|')  # separators, and what Windows refuses in a file name
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9 ._()+,&!=@~-]+")  # the ASCII fallback: no quotes, no escapes


def _clean(text: str) -> str:
    """One line of text fit for a file name: no control or format characters, no separators."""
    out = "".join("_" if c in _NOT_IN_NAMES else " " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    return " ".join(out.split()).strip(" .")[:MAX_NAME].strip(" .")


def download_name(title: str, mime: str, original_name: str = "") -> str:
    """The name to save an item under: its title, with the extension of the file it came from,
    or else one for its type (none for an unknown type)."""
    suffix = os.path.splitext(original_name)[1]
    if not _SUFFIX.fullmatch(suffix):
        suffix = _EXTENSIONS[mime] if mime in _EXTENSIONS else (mimetypes.guess_extension(mime, strict=False) or "")
    stem = _clean(title) or _clean(os.path.splitext(original_name)[0]) or "download"
    if suffix and stem.lower().endswith(suffix.lower()):
        suffix = ""  # a title that already ends with it
    return stem + suffix


def attachment(name: str) -> str:
    """Content-Disposition for a download saved as ``name`` (RFC 6266): ``filename`` in plain ASCII
    for every client, and the exact name as ``filename*`` (RFC 8187) when it is not plain ASCII."""
    stem, suffix = os.path.splitext(name)
    plain = [
        _NOT_PLAIN.sub("_", unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode())
        for part in (stem, suffix)
    ]
    stem = plain[0].strip(" .")
    fallback = (stem if stem.strip("_") else "download") + plain[1]
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += "; filename*=UTF-8''" + quote(name, safe="!#$&+^`|~")
    return value


@dataclass
class _Open:
    file: io.BufferedReader
    st: os.stat_result
    checked_at: float
    users: int = 0  # responses sending from it right now
    dropped: bool = False  # out of the cache: closed when the last user is done
    etag: str = ""  # the validators, formatted once per open file
    last_modified: str = ""

    def __post_init__(self) -> None:
        self.etag = f"{self.st.st_mtime_ns:x}-{self.st.st_size:x}"
        self.last_modified = formatdate(self.st.st_mtime, usegmt=True)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def _open(path: Path) -> tuple[io.BufferedReader, os.stat_result]:
    f = path.open("rb")
    try:
        st = os.fstat(f.fileno())
        if not stat_mod.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
    except BaseException:
        f.close()
        raise
    return f, st


class OpenFiles:
    """The most recently served files, kept open (an LRU of ``OPEN_FILES``).

    Opening, closing and the periodic re-check run in the thread pool; a hit
    costs a dictionary lookup. A file whose path now names something else
    (replaced, deleted) is reopened or reported missing. A file leaving the
    cache while a response still sends from it is closed when that response
    is done.
    """

    def __init__(self, size: int = OPEN_FILES, revalidate_after: float = REVALIDATE_AFTER) -> None:
        self.size = size
        self.revalidate_after = revalidate_after
        self._files: OrderedDict[Path, _Open] = OrderedDict()
        self._closing: set[asyncio.Future[None]] = set()

    async def acquire(self, path: Path) -> _Open:
        """The open file at ``path``, held until ``release``; raises OSError as ``open`` would."""
        entry = await self._lookup(path)
        entry.users += 1
        return entry

    def release(self, entry: _Open) -> None:
        entry.users -= 1
        if entry.dropped and entry.users == 0:
            self._close(entry)

    async def _lookup(self, path: Path) -> _Open:
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        entry = self._files.get(path)
        if entry is not None:
            if now - entry.checked_at < self.revalidate_after:
                self._files.move_to_end(path)
                return entry
            try:
                current = await loop.run_in_executor(None, os.stat, path)
            except OSError:
                self._drop(path)
                raise
            if _same_file(current, entry.st) and self._files.get(path) is entry:
                entry.checked_at = now
                self._files.move_to_end(path)
                return entry
            self._drop(path)
        f, st = await loop.run_in_executor(None, _open, path)
        self._drop(path)  # opened meanwhile by a concurrent request: the newer one stays
        entry = self._files[path] = _Open(f, st, now)
        while len(self._files) > self.size:
            self._drop(next(iter(self._files)))
        return entry

    def _drop(self, path: Path) -> None:
        entry = self._files.pop(path, None)
        if entry is None:
            return
        entry.dropped = True
        if entry.users == 0:
            self._close(entry)

    def _close(self, entry: _Open) -> None:
        fut = asyncio.get_running_loop().run_in_executor(None, entry.file.close)
        self._closing.add(fut)
        fut.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every file (at shutdown, once no response is sending)."""
        for path in list(self._files):
            self._drop(path)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _etag_matches(value: str, etags: tuple[Any, ...] | None, *, weak: bool) -> bool:
    if not etags:
        return False
    if len(etags) == 1 and etags[0].value == "*":
        return True
    return any(e.value == value for e in etags if weak or not e.is_weak)


class FileServe(web.StreamResponse):
    """A stored file: conditional requests, one byte range, sendfile; the file kept open."""

    def __init__(self, path: Path, files: OpenFiles, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(headers=headers)
        self._path = path
        self._files = files
        self.body_sent = 0  # bytes of the body handed to the network so far (none for HEAD, 304, 416)
        self.send_piece: int | None = None  # None: the body in one loop.sendfile call (see SEND_PIECE)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            # send_counted() sends inside the handler; aiohttp prepares the returned
            # response again, which must then be a no-op.
            return await super().prepare(request)
        try:
            entry = await self._files.acquire(self._path)
        except PermissionError:
            return await self._empty(request, 403)
        except OSError:
            return await self._empty(request, 404)
        try:
            return await self._send(request, entry)
        finally:
            self._files.release(entry)

    async def _empty(self, request: web.BaseRequest, status: int) -> AbstractStreamWriter | None:
        self.set_status(status)
        self.content_length = 0
        return await super().prepare(request)

    async def _send(self, request: web.BaseRequest, entry: _Open) -> AbstractStreamWriter | None:
        st, size, etag = entry.st, entry.st.st_size, entry.etag
        # RFC 9110 section 13.2.2: If-Match, else If-Unmodified-Since; then
        # If-None-Match, else If-Modified-Since.
        if_match = request.if_match
        if if_match is not None and not _etag_matches(etag, if_match, weak=False):
            return await self._empty(request, 412)
        unmodified = request.if_unmodified_since
        mtime = int(st.st_mtime)  # HTTP dates have whole seconds
        if if_match is None and unmodified is not None and mtime > unmodified.timestamp():
            return await self._empty(request, 412)
        if_none = request.if_none_match
        modified = request.if_modified_since
        if (if_none is not None and _etag_matches(etag, if_none, weak=True)) or (
            if_none is None and modified is not None and mtime <= modified.timestamp()
        ):
            self.set_status(304)
            self.headers[hdrs.ETAG] = f'"{etag}"'
            self.headers[hdrs.LAST_MODIFIED] = entry.last_modified
            return await super().prepare(request)

        try:
            span = parse_range(
                request.headers.get(hdrs.RANGE), size, if_range=self._if_range(request, st, etag), etag=etag
            )
        except RangeNotSatisfiable:
            self.headers[hdrs.CONTENT_RANGE] = f"bytes */{size}"
            return await self._empty(request, 416)
        if span.length and request.method != hdrs.METH_HEAD:
            self._admit(request, span)
        self.headers[hdrs.ETAG] = f'"{etag}"'
        self.headers[hdrs.LAST_MODIFIED] = entry.last_modified
        self.headers[hdrs.ACCEPT_RANGES] = "bytes"
        if span.partial:
            self.set_status(206)
            self.headers[hdrs.CONTENT_RANGE] = span.content_range(size)
        self.content_length = span.length
        writer = await super().prepare(request)
        if span.length and request.method != hdrs.METH_HEAD:
            await self._sendfile(request, entry.file, span)
            await super().write_eof()
        return writer

    def _admit(self, request: web.BaseRequest, span: ByteRange) -> None:
        """Last word on a request before anything is sent: a subclass may raise to refuse it."""

    @staticmethod
    def _if_range(request: web.BaseRequest, st: os.stat_result, etag: str) -> str | None:
        """If-Range as parse_range takes it: the validator when it matches, anything else when not."""
        value = request.headers.get(hdrs.IF_RANGE)
        if value is None:
            return None
        value = value.strip()
        if value.startswith(('"', "W/")):
            return value.strip('"') if value == f'"{etag}"' else "\0"  # strong comparison only
        date = request.if_range  # an HTTP date: the range holds if not modified since
        return etag if date is not None and int(st.st_mtime) <= date.timestamp() else "\0"

    async def _sendfile(self, request: web.BaseRequest, f: io.BufferedReader, span: ByteRange) -> None:
        """Send ``span`` of ``f``, adding to ``body_sent`` as it goes; a client that hangs up raises
        ConnectionError (ConnectionResetError, BrokenPipeError, or a plain one from asyncio)."""
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("connection lost")
        offset, count = span.start, span.length
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_write_buffer_size() == 0:
            # The headers are out and nothing is queued before the body: send what
            # the socket takes now, without a round trip through the event loop.
            try:
                while count:
                    sent = os.sendfile(sock.fileno(), f.fileno(), offset, count)
                    if not sent:
                        break
                    offset += sent
                    count -= sent
                    self.body_sent += sent
            except (BlockingIOError, InterruptedError):
                pass  # the socket buffer is full: loop.sendfile waits for room
        loop = asyncio.get_running_loop()
        while count:
            sent = await loop.sendfile(transport, f, offset, min(count, self.send_piece or count))
            if not sent:
                raise ConnectionResetError("the file ended before its size")  # truncated under us
            offset += sent
            count -= sent
            self.body_sent += sent
