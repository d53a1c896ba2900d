"""A bench-local prototype of the changes docs/benchmarks.md recommends for streaming.

It runs the real ``priv-network serve`` after patching, in this process only,
what every ``GET /api/v1/items/{id}/content`` pays today. Nothing under node/
or priv_network/ is edited. ``PN_BENCH_PROTO`` (comma-separated, default
``cache,fd,reqid,direct``) picks the patches:

``cache``
    ``ContentManager.authenticate`` looks the bearer token up in SQLite
    (``api_tokens``) on every request, and the content handler reads the
    item row (a join with ``blobs``) twice (``ItemsApi._is_local`` ->
    ``get_item``, then ``content_file`` -> ``get_item``): three SQLAlchemy +
    aiosqlite round trips per request. The prototype keeps verified tokens in
    memory for a few seconds (a real change: never past the token's expiry,
    evicted on logout/revocation) and ``ItemInfo``/``ContentFile`` per item id
    until the next catalog change (``notify_changed``: add, title,
    visibility, remove). Blobs are content-addressed and immutable, so the map
    cannot go stale between changes.
``fd``
    aiohttp's ``FileResponse.prepare`` opens and stats the file in the default
    thread pool and closes it there again: two thread hand-offs per request,
    which on a busy core cost more than the sendfile itself. The prototype
    keeps the 64 most recently used blobs open (one ``open``+``fstat`` per
    blob, in the pool) and hands the cached file to aiohttp's own
    range/header code (``_prepare_open_file``). sendfile is given explicit
    offsets, so one descriptor serves any number of concurrent ranges. (The
    prototype skips the If-None-Match/If-Modified-Since check that
    ``_make_response`` does; a real change keeps it, on the cached stat.)
``direct`` (with ``fd``)
    asyncio's ``loop.sendfile`` registers the socket with the poller, pauses
    and resumes reading, and waits a loop turn before the first byte, for
    every response. The prototype first calls ``os.sendfile`` on the socket
    right away (a 1 MiB range usually fits in the socket buffer at once) and
    only hands what is left to ``loop.sendfile``.
``reqid``
    ``error_middleware`` draws a request id from ``secrets.token_hex(6)``
    (a getrandom syscall) for every request; the prototype uses
    ``random.getrandbits`` (ids for log correlation need no secrecy).

    PN_BENCH_PROTO=cache,fd python bench/_proto_serve.py --data DIR serve
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aiohttp import web

from node import api as node_api
from node.service import ContentManager
from priv_network import http as pn_http
from priv_network.cli import main
from priv_network.interfaces import ContentFile, Principal

AUTH_TTL = 10.0
OPEN_FILES = 64

_orig_authenticate = ContentManager.authenticate
_orig_content_file = ContentManager.content_file
_orig_get_item = ContentManager.get_item
_orig_end_session = ContentManager.end_session
# The change hook was renamed once (``_changed`` -> ``notify_changed``); follow either.
_CHANGED_HOOK = "notify_changed" if hasattr(ContentManager, "notify_changed") else "_changed"
_orig_changed = getattr(ContentManager, _CHANGED_HOOK)

_auth_cache: dict[str, tuple[Principal, float]] = {}
_file_cache: dict[str, ContentFile] = {}
_item_cache: dict[str, Any] = {}
_open_files: OrderedDict[Path, tuple[Any, os.stat_result]] = OrderedDict()


# -- cache: no database round trip per content request -----------------------------


async def authenticate(self: ContentManager, token: str) -> Principal | None:
    now = time.monotonic()
    hit = _auth_cache.get(token)
    if hit is not None and hit[1] > now:
        return hit[0]
    principal = await _orig_authenticate(self, token)
    if principal is not None:
        if len(_auth_cache) > 10_000:
            _auth_cache.clear()
        _auth_cache[token] = (principal, now + AUTH_TTL)
    else:
        _auth_cache.pop(token, None)
    return principal


async def end_session(self: ContentManager, token: str) -> None:
    _auth_cache.pop(token, None)
    await _orig_end_session(self, token)


async def content_file(self: ContentManager, item_id: str) -> ContentFile:
    hit = _file_cache.get(item_id)
    if hit is not None:
        return hit
    f = await _orig_content_file(self, item_id)
    if len(_file_cache) > 10_000:
        _file_cache.clear()
    _file_cache[item_id] = f
    return f


async def get_item(self: ContentManager, item_id: str) -> Any:
    hit = _item_cache.get(item_id)
    if hit is not None:
        return hit
    item = await _orig_get_item(self, item_id)  # NotFound is not cached
    if len(_item_cache) > 10_000:
        _item_cache.clear()
    _item_cache[item_id] = item
    return item


async def changed(self: ContentManager) -> None:
    _file_cache.clear()
    _item_cache.clear()
    await _orig_changed(self)


# -- fd: reuse open blob files, no thread hand-off per request -------------------------


def _open_stat(path: Path) -> tuple[Any, os.stat_result]:
    fobj = open(path, "rb")  # noqa: SIM115 - kept open in the cache
    return fobj, os.fstat(fobj.fileno())


class _CachedFdPrepare(web.FileResponse):
    direct = False

    async def _sendfile(self, request: web.BaseRequest, fobj: Any, offset: int, count: int) -> Any:
        if not self.direct:
            return await super()._sendfile(request, fobj, offset, count)
        writer = await web.StreamResponse.prepare(self, request)
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_write_buffer_size() == 0:
            # The headers are out and nothing is queued: send straight away, no poller round trip.
            try:
                while count > 0:
                    sent = os.sendfile(sock.fileno(), fobj.fileno(), offset, count)
                    if sent == 0:
                        break
                    offset += sent
                    count -= sent
            except BlockingIOError:
                pass  # the socket buffer is full: asyncio's sendfile waits for room
        if count > 0:
            await asyncio.get_running_loop().sendfile(transport, fobj, offset, count)
        await web.StreamResponse.write_eof(self)
        return writer

    async def prepare(self, request: web.BaseRequest) -> Any:
        entry = _open_files.get(self._path)
        if entry is None:
            loop = asyncio.get_running_loop()
            try:
                entry = await loop.run_in_executor(None, _open_stat, self._path)
            except OSError:
                return await super().prepare(request)  # aiohttp's own 403/404 answers
            _open_files[self._path] = entry
            while len(_open_files) > OPEN_FILES:
                _path, (old, _st) = _open_files.popitem(last=False)
                loop.run_in_executor(None, old.close)
        else:
            _open_files.move_to_end(self._path)
        fobj, st = entry
        return await self._prepare_open_file(request, fobj, st, None)


class _FdCachedResponse(node_api._RangeSafeFileResponse, _CachedFdPrepare):
    """The node's range sanitising, then the cached-descriptor prepare."""


def file_response(f: ContentFile, *, immutable: bool = False) -> web.FileResponse:
    headers = {"Content-Type": f.mime}
    if immutable:
        headers["Cache-Control"] = "private, max-age=31536000, immutable"
    return _FdCachedResponse(f.path, chunk_size=256 * 1024, headers=headers)


def patch(options: set[str]) -> None:
    if "cache" in options:
        for name, fn in {
            "authenticate": authenticate,
            "end_session": end_session,
            "content_file": content_file,
            "get_item": get_item,
            _CHANGED_HOOK: changed,
        }.items():
            setattr(ContentManager, name, fn)
    if "fd" in options:
        node_api.file_response = file_response  # type: ignore[assignment]
    if "direct" in options:
        _CachedFdPrepare.direct = True
    if "reqid" in options:
        pn_http.secrets = types.SimpleNamespace(  # type: ignore[attr-defined]
            token_hex=lambda n: f"{random.getrandbits(n * 8):0{n * 2}x}"
        )


if __name__ == "__main__":
    chosen = {o.strip() for o in os.environ.get("PN_BENCH_PROTO", "cache,fd,reqid,direct").split(",") if o.strip()}
    unknown = chosen - {"cache", "fd", "reqid", "direct"}
    if unknown:
        raise SystemExit(f"unknown PN_BENCH_PROTO option(s): {', '.join(sorted(unknown))}")
    patch(chosen)
    sys.exit(main(sys.argv[1:]))
