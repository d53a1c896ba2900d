"""The URL download queue: yt-dlp as a library, durable across restarts.

Each download is a row (pending → processing → downloaded | error |
canceled) with progress; a fixed number of workers take pending rows in
order (FIFO), each running yt-dlp in a thread off the event loop. After a
restart, rows left processing go back to pending and yt-dlp continues their
partial files (each download has its own folder under the store). A finished
file is renamed into the content store through the CMA with yt-dlp's title,
description, duration and source URL. URLs on private, loopback and
link-local addresses are refused unless [downloads] allow_private is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import imageio_ffmpeg
import yt_dlp
import yt_dlp.utils
from aiohttp import web

from node.blobs import BlobStore
from node.service import ContentManager, check_visibility
from node.store import CmaStore
from priv_network.errors import Conflict, Forbidden, InvalidInput, NotFound, PrivNetworkError
from priv_network.http import int_param, json_body, principal_of, require_admin

log = logging.getLogger(__name__)

STATES = ("pending", "processing", "downloaded", "error", "canceled")
MAX_URL = 2000


class _YtdlpLog:
    """yt-dlp's messages into our log (it would print to the terminal otherwise)."""

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    def info(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    def warning(self, msg: str) -> None:
        log.info("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        log.info("yt-dlp: %s", msg)


def _short(exc: BaseException) -> str:
    text = str(exc).replace("ERROR: ", "").strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class Downloads:
    def __init__(
        self,
        *,
        store: CmaStore,
        blobs: BlobStore,
        cma: ContentManager,
        workers: int,
        allow_private: bool,
        max_filesize: int,
        socket_timeout: float,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._cma = cma
        self.workers = workers
        self.allow_private = allow_private
        self.max_filesize = max_filesize
        self.socket_timeout = socket_timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pn-download")
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._cancel: dict[str, threading.Event] = {}
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._last_saved: dict[str, float] = {}
        self.closing = asyncio.Event()

    @property
    def root(self) -> Path:
        return self._blobs.root / "downloads"

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        requeued = await self._store.requeue_interrupted_downloads()
        if requeued:
            log.info("taking up %d downloads interrupted by the last shutdown", requeued)
        self._tasks = [asyncio.create_task(self._worker(n), name=f"download worker {n}") for n in range(self.workers)]
        self._wake.set()

    async def close_streams(self) -> None:
        """At shutdown: end event streams so they do not hold the server up."""
        self.closing.set()

    async def stop(self) -> None:
        self.closing.set()
        for event in self._cancel.values():
            event.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the queue ------------------------------------------------------------
    async def check_url(self, url: str) -> str:
        url = url.strip()
        if len(url) > MAX_URL:
            raise InvalidInput("the URL is too long")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("only http:// and https:// URLs can be downloaded")
        if not self.allow_private:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443)
            except OSError:
                raise InvalidInput(f"cannot resolve {parts.hostname}") from None
            for info in infos:
                address = ipaddress.ip_address(info[4][0])
                if (
                    address.is_private
                    or address.is_loopback
                    or address.is_link_local
                    or address.is_reserved
                    or address.is_multicast
                    or address.is_unspecified
                ):
                    raise Forbidden(
                        f"{parts.hostname} is a private or local address; downloads from it are refused "
                        "([downloads] allow_private is off)"
                    )
        return url

    async def add(self, url: str, owner: str, visibility: str) -> tuple[dict[str, Any], bool]:
        """Queue ``url``; returns (row, created). A URL queued or already downloaded is not fetched again."""
        url = await self.check_url(url)
        visibility = check_visibility(visibility)
        for row in await self._store.downloads_by_url(url):
            if row["state"] in ("pending", "processing"):
                return row, False
            if row["state"] == "downloaded" and row["item_id"]:
                try:
                    await self._cma.get_item(row["item_id"])
                    return row, False
                except NotFound:
                    continue
        now = time.time()
        row = {
            "id": secrets.token_hex(16),
            "url": url,
            "owner": owner,
            "visibility": visibility,
            "state": "pending",
            "message": "waiting",
            "bytes": 0,
            "created_at": now,
            "updated_at": now,
        }
        await self._store.insert_download(row)
        self._publish(row)
        self._wake.set()
        return row, True

    async def get(self, download_id: str) -> dict[str, Any]:
        row = await self._store.get_download(download_id) if len(download_id) == 32 else None
        if row is None:
            raise NotFound(f"no download {download_id[:40]}")
        return row

    async def list(self) -> list[dict[str, Any]]:
        return await self._store.list_downloads()

    async def retry(self, download_id: str) -> dict[str, Any]:
        row = await self.get(download_id)
        if row["state"] not in ("error", "canceled"):
            raise Conflict(f"only failed or canceled downloads can be retried (this one is {row['state']})")
        await self._set(download_id, {"state": "pending", "message": "waiting (retry)"})
        self._wake.set()
        return await self.get(download_id)

    async def cancel(self, download_id: str) -> dict[str, Any]:
        row = await self.get(download_id)
        if row["state"] == "pending":
            await self._set(download_id, {"state": "canceled", "message": "canceled"}, only_if="pending")
        elif row["state"] == "processing":
            event = self._cancel.get(download_id)
            if event is not None:
                event.set()
        else:
            raise Conflict(f"a download that is {row['state']} cannot be canceled")
        return await self.get(download_id)

    async def delete(self, download_id: str, *, delete_file: bool) -> None:
        row = await self.get(download_id)
        if row["state"] == "processing":
            await self.cancel(download_id)
        if delete_file and row["item_id"]:
            with contextlib.suppress(NotFound):
                await self._cma.remove_item(row["item_id"])
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: shutil.rmtree(self.root / download_id, ignore_errors=True)
        )
        await self._store.delete_download(download_id)
        self._publish({"id": download_id, "state": "deleted"})

    # -- workers --------------------------------------------------------------
    async def _worker(self, number: int) -> None:
        while True:
            row = await self._store.next_pending_download()
            if row is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if not await self._store.update_download(
                row["id"], {"state": "processing", "message": "starting", "updated_at": time.time()}, only_if="pending"
            ):
                continue  # another worker took it
            self._publish(await self.get(row["id"]))
            try:
                await self._run(row)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("download %s crashed", row["id"])
                await self._set(row["id"], {"state": "error", "message": "internal error; see the node's log"})

    async def _run(self, row: dict[str, Any]) -> None:
        download_id = row["id"]
        cancel = self._cancel.setdefault(download_id, threading.Event())
        cancel.clear()
        loop = asyncio.get_running_loop()
        folder = self.root / download_id

        def hook(d: dict[str, Any]) -> None:
            if cancel.is_set():
                raise yt_dlp.utils.DownloadCancelled("canceled")
            if d.get("status") == "downloading":
                progress = {
                    "bytes": int(d.get("downloaded_bytes") or 0),
                    "total": d.get("total_bytes") or d.get("total_bytes_estimate"),
                    "speed": d.get("speed"),
                    "eta": d.get("eta"),
                    "message": "downloading",
                }
                loop.call_soon_threadsafe(self._progress, download_id, progress)

        params: dict[str, Any] = {
            "outtmpl": str(folder / "%(title).120B [%(id)s].%(ext)s"),
            "continuedl": True,
            "noplaylist": True,
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "logger": _YtdlpLog(),
            "progress_hooks": [hook],
            "ffmpeg_location": imageio_ffmpeg.get_ffmpeg_exe(),
            "socket_timeout": self.socket_timeout,
            "retries": 3,
            "restrictfilenames": False,
            "windowsfilenames": True,
        }
        if self.max_filesize:
            params["max_filesize"] = self.max_filesize

        def run() -> dict[str, Any]:
            folder.mkdir(parents=True, exist_ok=True)
            with yt_dlp.YoutubeDL(params) as ydl:
                info = ydl.extract_info(row["url"], download=True)
                return dict(ydl.sanitize_info(info) or {})

        try:
            info = await loop.run_in_executor(self._executor, run)
        except yt_dlp.utils.DownloadCancelled:
            # The partial file goes first, so whoever sees "canceled" finds it gone (as "downloaded" does).
            await loop.run_in_executor(None, lambda: shutil.rmtree(folder, ignore_errors=True))
            await self._set(download_id, {"state": "canceled", "message": "canceled", "speed": None, "eta": None})
            return
        except (yt_dlp.utils.DownloadError, yt_dlp.utils.ExtractorError, OSError) as exc:
            await self._set(download_id, {"state": "error", "message": _short(exc), "speed": None, "eta": None})
            return
        finally:
            self._cancel.pop(download_id, None)
        path = self._result_file(info, folder)
        if path is None:
            reason = (
                f"yt-dlp skipped the file: it is larger than [downloads] max_filesize ({self.max_filesize} bytes)"
                if self.max_filesize
                else "yt-dlp finished without producing a file"
            )
            await self._set(download_id, {"state": "error", "message": reason, "speed": None, "eta": None})
            return
        metadata = {
            "description": info.get("description"),
            "duration": info.get("duration"),
            "source_url": info.get("webpage_url") or row["url"],
            "genres": list(info.get("categories") or [])[:10],
        }
        upload_date = str(info.get("upload_date") or "")
        if upload_date[:4].isdigit():
            metadata["year"] = int(upload_date[:4])
        title = info.get("title") if isinstance(info.get("title"), str) else None
        try:
            item, created = await self._cma.ingest_stored_file(
                path,
                name=path.name,
                title=(title or "").strip()[:500] or None,
                visibility=row["visibility"],
                source="url",
                metadata=metadata,
            )
        except PrivNetworkError as exc:
            await self._set(download_id, {"state": "error", "message": exc.message})
            return
        await loop.run_in_executor(None, lambda: shutil.rmtree(folder, ignore_errors=True))
        size = item.size
        await self._set(
            download_id,
            {
                "state": "downloaded",
                "message": "downloaded" if created else "downloaded (the same file was already here)",
                "item_id": item.id,
                "title": item.title,
                "bytes": size,
                "total": size,
                "speed": None,
                "eta": None,
            },
        )
        log.info("downloaded %s as item %s", row["url"], item.id)

    @staticmethod
    def _result_file(info: dict[str, Any], folder: Path) -> Path | None:
        for entry in info.get("requested_downloads") or []:
            candidate = entry.get("filepath")
            if candidate and Path(candidate).is_file():
                return Path(candidate)
        files = [p for p in folder.glob("*") if p.is_file() and not p.name.endswith((".part", ".ytdl", ".temp"))]
        return max(files, key=lambda p: p.stat().st_size) if files else None

    # -- progress and events --------------------------------------------------
    def _progress(self, download_id: str, progress: dict[str, Any]) -> None:
        now = time.time()
        self._publish({"id": download_id, "state": "processing", **progress})
        if now - self._last_saved.get(download_id, 0) >= 1.0:
            self._last_saved[download_id] = now
            task = asyncio.ensure_future(
                self._store.update_download(download_id, {**progress, "updated_at": now}, only_if="processing")
            )
            task.add_done_callback(lambda t: t.exception())

    async def _set(self, download_id: str, values: dict[str, Any], *, only_if: str | None = None) -> None:
        await self._store.update_download(download_id, {**values, "updated_at": time.time()}, only_if=only_if)
        row = await self._store.get_download(download_id)
        if row is not None:
            self._publish(row)

    def _publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                continue  # a slow reader misses progress ticks, not final states (it re-reads on reconnect)
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


def download_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "url": row.get("url"),
        "state": row["state"],
        "message": row.get("message"),
        "title": row.get("title"),
        "bytes": row.get("bytes", 0),
        "total": row.get("total"),
        "speed": row.get("speed"),
        "eta": row.get("eta"),
        "item_id": row.get("item_id"),
        "created_at": row.get("created_at"),
        "updated_at": row.get("updated_at"),
    }


class DownloadsApi:
    def __init__(self, downloads: Downloads) -> None:
        self.downloads = downloads

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/api/v1/downloads", self.list_downloads),
            web.post("/api/v1/downloads", self.add),
            web.get("/api/v1/downloads/events", self.events),
            web.get("/api/v1/downloads/{id}", self.get),
            web.patch("/api/v1/downloads/{id}", self.change),
            web.delete("/api/v1/downloads/{id}", self.delete),
        ]

    async def list_downloads(self, request: web.Request) -> web.Response:
        principal_of(request)
        return web.json_response({"downloads": [download_json(r) for r in await self.downloads.list()]})

    async def add(self, request: web.Request) -> web.Response:
        principal = require_admin(request)
        body = await json_body(request)
        url = body.get("url")
        if not isinstance(url, str) or not url.strip():
            raise InvalidInput("url must be an http(s) URL")
        visibility = body.get("visibility", "private")
        if not isinstance(visibility, str):
            raise InvalidInput("visibility must be a string")
        row, created = await self.downloads.add(url, principal.name, visibility)
        return web.json_response(download_json(row), status=201 if created else 200)

    async def get(self, request: web.Request) -> web.Response:
        principal_of(request)
        return web.json_response(download_json(await self.downloads.get(request.match_info["id"])))

    async def change(self, request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request)
        action = body.get("action")
        if action == "retry":
            row = await self.downloads.retry(request.match_info["id"])
        elif action == "cancel":
            row = await self.downloads.cancel(request.match_info["id"])
        else:
            raise InvalidInput("action must be retry or cancel")
        return web.json_response(download_json(row))

    async def delete(self, request: web.Request) -> web.Response:
        require_admin(request)
        delete_file = request.query.get("delete_file", "") in ("1", "true", "yes")
        await self.downloads.delete(request.match_info["id"], delete_file=delete_file)
        return web.json_response({"deleted": request.match_info["id"], "file_deleted": delete_file})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: a snapshot, then every change, with a keep-alive every 15 s."""
        principal_of(request)
        limit = int_param(request, "limit", 200, 1, 500)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        async with self.downloads.subscribe() as queue:
            await response.prepare(request)
            snapshot = [download_json(r) for r in (await self.downloads.list())[:limit]]
            await response.write(f"event: snapshot\ndata: {json.dumps(snapshot)}\n\n".encode())
            closing = asyncio.ensure_future(self.downloads.closing.wait())
            getter: asyncio.Future[dict[str, Any]] | None = None
            try:
                while not self.downloads.closing.is_set():
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, closing}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        if not self.downloads.closing.is_set():
                            await response.write(b": keep-alive\n\n")
                        continue
                    event = getter.result()
                    payload = download_json(event) if "url" in event else event
                    await response.write(f"event: download\ndata: {json.dumps(payload)}\n\n".encode())
            finally:
                closing.cancel()
                if getter is not None:
                    getter.cancel()  # the reader left mid-wait: no pending task is left behind
        return response
