"""The URL download queue: yt-dlp as a library, durable across restarts.

Each download is a row (pending → processing → downloaded | error |
canceled) with progress; a fixed number of workers take pending rows in
order (FIFO), each running yt-dlp in a thread off the event loop (a daemon
thread, left behind at shutdown so that a stalled server cannot hold up the
node's exit). After a restart, rows left processing go back to pending and
yt-dlp continues their partial files (each download has its own folder under
the store). A finished file is renamed into the content store through the
CMA with yt-dlp's title, description, duration and source URL.

Private, loopback and link-local addresses are refused unless [downloads]
allow_private is on: when a URL is queued (a clear 403), and again on every
connection yt-dlp makes while it runs (redirects, the media URLs a page
names, fragments, retries), against the address actually dialled after name
resolution, so neither a redirect nor a name that resolves differently later
reaches the LAN. See ``EgressGuard``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import json
import logging
import re
import secrets
import shutil
import sys
import threading
import time
import traceback
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import imageio_ffmpeg
import yt_dlp
import yt_dlp.utils
from aiohttp import web

from node.blobs import BlobStore
from node.service import ContentManager
from node.store import CmaStore
from priv_network.errors import Conflict, Forbidden, InvalidInput, NotFound, PrivNetworkError
from priv_network.http import int_param, json_body, principal_of, require_admin

log = logging.getLogger(__name__)
T = TypeVar("T")

STATES = ("pending", "processing", "downloaded", "error", "canceled")
MAX_URL = 2000
PRIVATE_OFF = "([downloads] allow_private is off)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_private_address(address: IPAddress) -> bool:
    """Private, loopback, link-local (cloud metadata), reserved, multicast or unspecified."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses downloads may connect to."""

    allow_private: bool
    # Networks allowed even when private addresses are refused (a NAS on the LAN, say).
    allowed: tuple[IPNetwork, ...] = ()

    def refuses(self, host: str) -> bool:
        """Whether a connection to ``host`` (an address literal) is refused; a name is refused too (unchecked)."""
        if self.allow_private:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0: the scope is not the address
        except ValueError:
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed):
            return False
        return is_private_address(address)


class RefusedAddress(ConnectionRefusedError):
    """A connection (or an external program fetching a URL) refused by the address policy.

    An OSError, so that yt-dlp and urllib3 treat it as the network failure it is (close the
    socket, try the next address, give up with an error) rather than crash.
    """


_URL_ARGUMENT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PROBE = "priv_network.egress_guard"
_WATCHED_EVENTS = frozenset({"socket.connect", "subprocess.Popen", _PROBE})


def refused_message(host: str) -> str:
    return f"refused to connect to {host}: a private or local address {PRIVATE_OFF}"


class _Watch:
    """One guarded download: its policy, and what was refused first (the message the user sees)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.refused: str | None = None

    def _refuse(self, message: str) -> None:
        if self.refused is None:
            self.refused = message
        raise RefusedAddress(message)

    def check_connect(self, address: Any) -> None:
        if not (isinstance(address, tuple) and address and isinstance(address[0], str)):
            self._refuse(refused_message(repr(address)[:100]))  # not an IP socket address: no download needs one
        elif self.policy.refuses(address[0]):
            self._refuse(refused_message(address[0]))

    def check_spawn(self, args: Any) -> None:
        """An external program (ffmpeg for a live stream, say) connects where no hook sees: no URLs for it."""
        for arg in [args] if isinstance(args, str | bytes) else list(args or ()):
            text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
            if _URL_ARGUMENT.match(text) and not text.lower().startswith("file:"):
                self._refuse(
                    f"refused to let an external program fetch {text[:100]}: its connections cannot be "
                    f"checked for private addresses {PRIVATE_OFF}"
                )


class EgressGuard:
    """Applies an ``AddressPolicy`` to every connection made by the threads that run yt-dlp.

    yt-dlp follows redirects, resolves names and opens connections inside its own request
    handlers (urllib, requests, websockets), with no per-hop hook for its caller; checking the
    URL when it is queued cannot see a redirect, nor a name that resolves to a LAN address
    when the download runs. So the check is made where every one of those connections
    passes: a Python audit hook (PEP 578, ``sys.addaudithook``) sees each ``socket.connect``
    with the address actually dialled, after name resolution, and raising there aborts the
    connection before it is made. It also sees ``subprocess.Popen``, and refuses an external
    program (ffmpeg) that would fetch a URL itself, since its connections are out of sight.

    The hook acts only in a thread inside ``guarding()``; in every other thread (the event
    loop, the ingest pool) it costs one set lookup per audit event and does nothing. Audit
    hooks cannot be removed, so there is one per process, installed on first use: hence this
    module-level singleton (``EGRESS_GUARD``), which keeps nothing between downloads but a
    thread-local. yt-dlp must do its network work in the guarded thread itself: guarded
    downloads set ``concurrent_fragment_downloads`` to 1 (fragments would otherwise be
    fetched from threads of yt-dlp's own).
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._installed = False

    @contextlib.contextmanager
    def guarding(self, policy: AddressPolicy) -> Iterator[_Watch]:
        with self._lock:
            if not self._installed:
                sys.addaudithook(self._hook)
                self._installed = True
        watch = _Watch(policy)
        self._local.watch = watch
        try:
            # sys.addaudithook can be vetoed by another hook without a word: fail closed if so.
            self._local.alive = False
            sys.audit(_PROBE)
            if not self._local.alive:
                raise RuntimeError("the download address guard could not be installed (an audit hook refused it)")
            yield watch
        finally:
            self._local.watch = None

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in _WATCHED_EVENTS:
            return
        watch: _Watch | None = getattr(self._local, "watch", None)
        if watch is None:
            return
        if event == "socket.connect":
            watch.check_connect(args[1])  # (socket, address)
        elif event == "subprocess.Popen":
            watch.check_spawn(args[1])  # (executable, args, cwd, env)
        else:
            self._local.alive = True


EGRESS_GUARD = EgressGuard()


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
        allowed_networks: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._cma = cma
        self.workers = workers
        self.allow_private = allow_private
        try:
            allowed = tuple(ipaddress.ip_network(n.strip(), strict=False) for n in allowed_networks)
        except ValueError as exc:
            raise InvalidInput(
                f"allowed networks must be addresses or networks such as 192.168.1.0/24: {exc}"
            ) from None
        self.policy = AddressPolicy(allow_private=allow_private, allowed=allowed)
        self.max_filesize = max_filesize
        self.socket_timeout = socket_timeout
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
        """Stop the workers at once; a running yt-dlp thread is left behind (see ``_in_daemon_thread``).

        Its download stays "processing" in the queue and is taken up at the next start.
        """
        self.closing.set()
        running = len(self._cancel)
        for event in self._cancel.values():
            event.set()  # the thread stops at its next progress tick, if it gets one
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if running:
            log.info("left %d running download(s) to be taken up at the next start", running)

    # -- the queue ------------------------------------------------------------
    async def check_url(self, url: str) -> str:
        url = url.strip()
        if len(url) > MAX_URL:
            raise InvalidInput("the URL is too long")
        try:
            parts = urlsplit(url)
            port = parts.port  # parsed lazily: "http://h:x/" fails only here
        except ValueError as exc:
            raise InvalidInput(f"not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("only http:// and https:// URLs can be downloaded")
        if not self.policy.allow_private:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port or 443)
            except OSError:
                raise InvalidInput(f"cannot resolve {parts.hostname}") from None
            for info in infos:
                if self.policy.refuses(str(info[4][0])):
                    raise Forbidden(
                        f"{parts.hostname} is a private or local address; downloads from it are refused {PRIVATE_OFF}"
                    )
        return url

    async def add(self, url: str, owner: str, visibility: str) -> tuple[dict[str, Any], bool]:
        """Queue ``url``; returns (row, created). A URL queued or already downloaded is not fetched again."""
        url = await self.check_url(url)
        visibility = await self._cma.check_audience(visibility)
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
        guarded = not self.policy.allow_private
        if guarded:
            # Keep the network work in the guarded thread (fragments would otherwise be fetched
            # from threads of yt-dlp's own), and in Python where the guard sees it: yt-dlp's own
            # HLS/DASH downloaders rather than ffmpeg (which the guard refuses to hand a URL).
            params["concurrent_fragment_downloads"] = 1
            params["external_downloader"] = {"default": "native"}

        def fetch() -> dict[str, Any]:
            with yt_dlp.YoutubeDL(params) as ydl:
                try:
                    info = ydl.extract_info(row["url"], download=True)
                except BaseException as exc:
                    _release_dropped_responses(exc)
                    raise
                return dict(ydl.sanitize_info(info) or {})

        def run() -> tuple[dict[str, Any], str | None]:
            folder.mkdir(parents=True, exist_ok=True)
            if not guarded:
                return fetch(), None
            with EGRESS_GUARD.guarding(self.policy) as watch:
                try:
                    info = fetch()
                except (yt_dlp.utils.DownloadError, yt_dlp.utils.ExtractorError, OSError):
                    if watch.refused is not None:
                        raise _Refused(watch.refused) from None
                    raise
                return info, watch.refused

        try:
            info, refused = await _in_daemon_thread(run, f"pn-download-{download_id[:8]}")
        except _Refused as exc:
            log.info("download %s: %s", download_id, exc.message)
            await self._set(download_id, {"state": "error", "message": exc.message, "speed": None, "eta": None})
            return
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
        if refused is not None:
            log.info("download %s went on after this: %s", download_id, refused)
        if path is None:
            reason = (
                f"yt-dlp skipped the file: it is larger than [downloads] max_filesize ({self.max_filesize} bytes)"
                if self.max_filesize
                else "yt-dlp finished without producing a file"
            )
            if refused is not None:
                reason = refused
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


def _in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run ``fn`` in a new daemon thread; the returned future gets its result or exception.

    yt-dlp blocks in socket reads for up to its socket_timeout when a server stalls, and
    cannot be interrupted. A ThreadPoolExecutor's threads are joined when the interpreter
    exits, so one stuck download would keep a stopped node's process alive that long after
    its shutdown. The queue is durable (a download cut by a shutdown is taken up at the next
    start), so at shutdown the thread is simply abandoned: a daemon thread does not hold the
    process. Workers bound how many of these threads run (one download each).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the waiting worker was cancelled (shutdown): nobody wants it
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the waiting coroutine, which decides
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: the node stopped meanwhile
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def _release_dropped_responses(exc: BaseException) -> None:
    """Close what yt-dlp dropped when a download stopped: stopped by our progress hook (a cancel,
    a shutdown), or failed (a transfer that broke off once too often).

    Its HTTP downloader lets go of the response it was reading without closing it;
    the response stays reachable from the frames of the exception's traceback, in a
    reference cycle, so its socket would stay open until the garbage collector next
    ran, anywhere in the process. Clearing those frames and collecting here closes it
    now (its ResourceWarning, about yt-dlp's own leak, is not ours to report).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        traceback.clear_frames(exc.__traceback__)
        gc.collect()


class _Refused(Exception):
    """A download that failed because the address policy refused a connection it needed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
