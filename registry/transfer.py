"""Brokered transfers: a member watches a peer's item through its own node.

The broker asks the owner for whole blocks covering the requested range
(signed request, HTTP Range), checks each block's BLAKE3 against the
owner's manifest before passing any of its bytes on, and trims to the
range. The manifest itself is checked against the manifest hash in the
owner's signed catalog entry. A block that does not verify aborts the
response (the client sees a connection cut short, never a wrong byte), is
logged with the peer named, and counts against that peer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
from aiohttp import hdrs, web

from priv_network.errors import Forbidden, InvalidInput, NotFound, PrivNetworkError, RangeNotSatisfiable
from priv_network.http import content_headers, ended_early, error_response
from priv_network.interfaces import PinStore, TrafficMeter
from priv_network.manifest import HASH_LEN, block_count, block_hash, manifest_hash
from priv_network.peerclient import PeerClient, PeerUnreachable, RelayEnded, read_body
from priv_network.ranges import ByteRange, parse_range
from priv_network.wire import ItemInfo, check_item_id
from registry.store import RegistryStore

log = logging.getLogger(__name__)

MANIFEST_CACHE = 128
POSTER_LIMIT = 4 * 1024 * 1024
# A player sends a request per range; the registry rows each needs (the item, who
# holds it, who is online) are remembered until the next sync round, a penalty, or
# at most this long (polls outside a round, such as a member coming back).
ITEM_CACHE = 1024
ITEM_CACHE_SECONDS = 10.0
# What can go wrong while reading a peer's body: cut, reset, stalled past the read timeout.
_CUT = (asyncio.IncompleteReadError, aiohttp.ClientError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Source:
    """A node that can serve an item's bytes: its owner, or a member holding a verified copy."""

    node_id: str
    url: str
    path: str
    online: bool
    name: str = ""


@dataclass(frozen=True)
class RemoteItem:
    item: ItemInfo
    url: str
    online: bool
    holders: tuple[Source, ...] = ()
    owner_name: str = ""

    @property
    def owner_label(self) -> str:
        """The owner as messages name it: its member name, else the start of its node ID."""
        return self.owner_name or self.item.node[:12]

    def sources(self) -> list[Source]:
        """Online nodes first, the owner before holders; offline ones last (they may be back)."""
        owner = Source(self.item.node, self.url, f"/federation/v1/content/{self.item.id}", self.online, self.owner_name)
        everyone = [owner, *self.holders]
        return [s for s in everyone if s.online] + [s for s in everyone if not s.online]


class TransferAborted(RelayEnded):
    """Raised after headers were sent: aiohttp then drops the connection quietly."""


class ViewerLeft(RelayEnded):
    """The viewer of a brokered stream closed its connection (a seek, a closed player): nobody's failure."""


RETRIED = "retried on each sync"


class PinSourceFailed(PeerUnreachable):
    """A source of a pin failed part-way (a cut, a corrupt block, a wrong answer); the message names it."""


class OwnerRefused(NotFound):
    """The owner answered and refused this node the item: it is no longer shared with this node."""


def _who(source: Source) -> str:
    return source.name or source.node_id[:12]


class BadBlock(Exception):
    """A source stopped sending, or sent a block that does not match the manifest (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def refused_by_owner(source: Source, item: ItemInfo, exc: PrivNetworkError) -> bool:
    """The owner answered, and said no: its rules decide, whatever a holder's older copy of them says.

    A holder checks the requester against the owner's rules as it last synced
    them, so right after the owner narrows who may see an item a holder may
    still let a member through. Holders are therefore asked only when the
    owner cannot be reached, never when it refuses.
    """
    return source.node_id == item.node and isinstance(exc, NotFound | Forbidden)


class BlockReader:
    """Cuts a peer's response body into blocks, as lists of the chunks they arrived in.

    Nothing is joined or copied: a block is a list of memoryviews of the
    network chunks (``StreamReader.readchunk``), which a pin hands to the CMA
    to be hashed and written as they are (``os.pwritev``). The end of the
    body before a block is complete raises ``asyncio.IncompleteReadError``.
    """

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._rest = memoryview(b"")

    async def read(self, length: int) -> list[memoryview]:
        """The next ``length`` bytes of the body."""
        parts: list[memoryview] = []
        need = length
        while need:
            if not self._rest:
                while True:
                    chunk, end_of_http_chunk = await self._content.readchunk()
                    if chunk:
                        break
                    if not end_of_http_chunk:  # the end of the body
                        raise asyncio.IncompleteReadError(b"", need)
                self._rest = memoryview(chunk)
            part = self._rest[:need] if len(self._rest) > need else self._rest
            self._rest = self._rest[len(part) :]
            parts.append(part)
            need -= len(part)
        return parts


class Broker:
    def __init__(
        self,
        *,
        store: RegistryStore,
        node_id: str,
        to_item: Callable[[dict[str, object]], ItemInfo],
        penalize: Callable[[str, str], Awaitable[None]],
        traffic: TrafficMeter,
    ) -> None:
        self.traffic = traffic
        self._store = store
        self.node_id = node_id
        self._to_item = to_item
        self._penalize = penalize
        self._client: PeerClient | None = None
        self._manifests: OrderedDict[str, bytes] = OrderedDict()
        self._items: OrderedDict[str, tuple[float, RemoteItem]] = OrderedDict()

    def set_client(self, client: PeerClient) -> None:
        self._client = client

    @property
    def client(self) -> PeerClient:
        assert self._client is not None, "Broker.set_client() not called"
        return self._client

    async def remote_item(self, item_id: str) -> RemoteItem:
        # A malformed ID (a NUL byte, say) cannot exist; PostgreSQL would reject it with a 500.
        check_item_id(item_id)
        now = time.monotonic()
        cached = self._items.get(item_id)
        if cached is not None and now - cached[0] < ITEM_CACHE_SECONDS:
            return cached[1]
        hit = await self._store.entry_by_item(item_id)
        if hit is None or hit.row["node_id"] == self.node_id:
            self._items.pop(item_id, None)
            raise NotFound(f"no item {item_id}")
        item = self._to_item(hit.row)
        holders = (await self._store.holders([item.content_hash])).get(item.content_hash, [])
        remote = RemoteItem(
            item=item,
            url=str(hit.row["source_url"]),
            online=hit.online,
            holders=tuple(
                Source(h["node_id"], h["url"], f"/federation/v1/blobs/{item.content_hash}", h["online"], h["name"])
                for h in holders
                if h["node_id"] not in (self.node_id, item.node)
            ),
            owner_name=hit.source_name,
        )
        self._items[item_id] = (now, remote)
        self._items.move_to_end(item_id)
        while len(self._items) > ITEM_CACHE:
            self._items.popitem(last=False)
        return remote

    async def forget(self) -> None:
        """Drop the registry rows remembered per item: a sync round may have changed them."""
        self._items.clear()

    async def item(self, item_id: str) -> ItemInfo:
        return (await self.remote_item(item_id)).item

    async def views(self, item: ItemInfo) -> int:
        totals = await self._store.view_totals([(item.node, item.id)])
        return totals.get((item.node, item.id), 0)

    async def manifest(self, remote: RemoteItem) -> bytes:
        """The item's block manifest, from its owner or any holder, checked against the signed catalog."""
        item = remote.item
        cached = self._manifests.get(item.manifest_hash)
        if cached is not None:
            self._manifests.move_to_end(item.manifest_hash)
            return cached
        failure: PrivNetworkError = PeerUnreachable(f"no member that has {item.id} can be reached")
        for source in remote.sources():
            path = f"{source.path}/manifest" if source.node_id != item.node else f"/federation/v1/manifest/{item.id}"
            try:
                data = await self.client.get(source.url, path)
            except (PeerUnreachable, NotFound, Forbidden) as exc:
                if refused_by_owner(source, item, exc):
                    raise self._refused(remote) from None
                failure = exc
                continue
            blocks = self._check_manifest(item, data)
            if blocks is None:
                await self.penalize(source.node_id, f"sent a manifest for {item.id} that does not match")
                failure = InvalidInput(f"the manifest from {source.url} does not match the signed catalog")
                continue
            self._manifests[item.manifest_hash] = blocks
            while len(self._manifests) > MANIFEST_CACHE:
                self._manifests.popitem(last=False)
            return blocks
        raise failure

    @staticmethod
    def _check_manifest(item: ItemInfo, data: Any) -> bytes | None:
        try:
            blocks = base64.b64decode(data["blocks"], validate=True)
            block_size, size = int(data["block_size"]), int(data["size"])
        except (KeyError, TypeError, ValueError):
            return None
        if (
            block_size != item.block_size
            or size != item.size
            or len(blocks) != HASH_LEN * block_count(size, block_size)
            or manifest_hash(block_size, size, blocks) != item.manifest_hash
        ):
            return None
        return blocks

    async def stream(self, request: web.Request, item_id: str) -> web.StreamResponse:
        remote = await self.remote_item(item_id)
        item = remote.item
        etag = f'"{item.content_hash}"'
        # The item's URL serves new bytes if its owner replaces the file in place,
        # so clients revalidate (Cache-Control: no-cache) and a match costs a 304.
        if_none = request.if_none_match
        if if_none and any(e.value in ("*", item.content_hash) for e in if_none):
            return web.Response(status=304, headers={hdrs.ETAG: etag, hdrs.CACHE_CONTROL: "private, no-cache"})
        try:
            rng = parse_range(
                request.headers.get(hdrs.RANGE), item.size, if_range=request.headers.get(hdrs.IF_RANGE), etag=etag
            )
        except RangeNotSatisfiable as exc:
            # As for a local file: a 416 says the current length (RFC 9110 section 15.5.17).
            refused = error_response(request, exc.status, exc.code, exc.message)
            refused.headers[hdrs.CONTENT_RANGE] = f"bytes */{item.size}"
            return refused
        response = web.StreamResponse(status=206 if rng.partial else 200)
        response.headers.update(content_headers(item.mime))
        response.content_length = rng.length
        response.headers[hdrs.ACCEPT_RANGES] = "bytes"
        response.headers[hdrs.ETAG] = etag
        response.headers[hdrs.CACHE_CONTROL] = "private, no-cache"
        if rng.partial:
            response.headers[hdrs.CONTENT_RANGE] = rng.content_range(item.size)
        if rng.length == 0 or request.method == "HEAD":
            await response.prepare(request)
            await response.write_eof()
            return response
        manifest = await self.manifest(remote)
        bs = item.block_size
        first, last = rng.start // bs, (rng.stop - 1) // bs
        up_start, up_stop = first * bs, min(item.size, (last + 1) * bs)
        headers = {"Range": f"bytes={up_start}-{up_stop - 1}"}
        failure: PrivNetworkError = PeerUnreachable(f"no member that has {item.id} can be reached")
        for source in remote.sources():
            try:
                async with self.client.stream(source.url, source.path, headers=headers) as upstream:
                    expected = f"bytes {up_start}-{up_stop - 1}/{item.size}"
                    whole = up_start == 0 and up_stop == item.size and upstream.status == 200
                    if not whole and (upstream.status != 206 or upstream.headers.get(hdrs.CONTENT_RANGE) != expected):
                        await self.penalize(source.node_id, "answered a range request with the wrong range")
                        raise PeerUnreachable(f"{source.url} answered with the wrong range")
                    try:
                        # The first block is checked before the status goes out: a source that
                        # fails on it is answered with a clean error (or replaced by the next one).
                        block = await self._block(upstream, source, item, manifest, first)
                    except BadBlock as bad:
                        await self.penalize(source.node_id, bad.reason)
                        raise PeerUnreachable(f"{_who(source)} {bad.reason}") from None
                    await response.prepare(request)
                    try:
                        await self._relay(
                            request, response, upstream, block, source=source, item=item, manifest=manifest, rng=rng
                        )
                    finally:
                        await self.traffic.add(f"peer:{source.node_id}", "received", upstream.content.total_bytes)
            except RelayEnded as ended:
                # The viewer left (a seek, a closed player), or a bad block cut the relay (logged and
                # penalised already). Raised out of the handler, aiohttp would log it as an error with
                # a traceback: the response goes back instead, its connection closed, and aiohttp
                # finishes it quietly.
                log.debug("brokered %s ended early: %s", item.id, ended)
                return ended_early(request, response)
            except (PeerUnreachable, NotFound, Forbidden) as exc:
                if response.prepared:
                    raise
                if refused_by_owner(source, item, exc):
                    raise self._refused(remote) from None
                log.info("cannot get %s from %s: %s; trying the next holder", item.id, source.node_id, exc.message)
                failure = exc
                continue
            await response.write_eof()
            return response
        raise failure

    def _refused(self, remote: RemoteItem) -> OwnerRefused:
        """The owner refused this node the item: forget the registry row kept for it, and say so."""
        self._items.pop(remote.item.id, None)
        return OwnerRefused(f"{remote.owner_label} no longer shares {remote.item.id} with this node")

    async def _block(
        self, upstream: aiohttp.ClientResponse, source: Source, item: ItemInfo, manifest: bytes, index: int
    ) -> bytes:
        """Block ``index``, read whole from the source and checked against the manifest (BadBlock if not)."""
        try:
            block = await upstream.content.readexactly(min(item.block_size, item.size - index * item.block_size))
        except _CUT as exc:
            log.warning("transfer of %s from %s cut at block %d: %r", item.id, source.node_id, index, exc)
            raise BadBlock(f"stopped sending {item.id} at block {index}") from None
        if block_hash(block) != manifest[index * HASH_LEN : (index + 1) * HASH_LEN]:
            log.warning("block %d of %s from %s does not match its manifest", index, item.id, source.node_id)
            raise BadBlock(f"sent a corrupt block {index} of {item.id}")
        return block

    async def _relay(
        self,
        request: web.Request,
        response: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        block: bytes,
        *,
        source: Source,
        item: ItemInfo,
        manifest: bytes,
        rng: ByteRange,
    ) -> None:
        """Pass verified blocks on, trimmed to the range, from ``block`` (the first, already checked) on.

        Each block is read whole, hashed once and sent in one write; no byte of
        it leaves before all of it is checked, and a bad or missing block
        aborts the response. (Hashing the chunks as they arrive and joining
        them afterwards was measured slower: bench/broker.py, docs/benchmarks.md.)
        """
        bs = item.block_size
        first, last = rng.start // bs, (rng.stop - 1) // bs
        for index in range(first, last + 1):
            if index > first:
                try:
                    block = await self._block(upstream, source, item, manifest, index)
                except BadBlock as bad:
                    await self._abort(request, source, bad.reason)
            pos = index * bs
            lo, hi = max(rng.start - pos, 0), min(rng.stop - pos, len(block))
            try:
                await response.write(block if (lo, hi) == (0, len(block)) else memoryview(block)[lo:hi])
            except ConnectionResetError:
                raise ViewerLeft(f"the viewer of {item.id} left") from None

    async def penalize(self, node_id: str, reason: str) -> None:
        await self._penalize(node_id, reason)
        self._items.clear()  # the peer is now backed off: the next request asks another source first

    async def _abort(self, request: web.Request, source: Source, reason: str) -> NoReturn:
        await self.penalize(source.node_id, reason)
        if request.transport is not None:
            request.transport.abort()
        raise TransferAborted(f"transfer aborted: {source.node_id} {reason}")

    async def poster(self, item_id: str) -> web.Response:
        remote = await self.remote_item(item_id)
        if not remote.item.has_poster:
            raise NotFound(f"item {item_id} has no poster")
        async with self.client.stream(remote.url, f"/federation/v1/poster/{item_id}") as upstream:
            data = await read_body(upstream, POSTER_LIMIT)
        if len(data) > POSTER_LIMIT or not data.startswith(b"\xff\xd8"):
            raise PeerUnreachable(f"{remote.url} sent an invalid poster")
        return web.Response(
            body=data, content_type="image/jpeg", headers={hdrs.CACHE_CONTROL: "private, max-age=86400"}
        )


class Pinner:
    """Mirrors peers' items into the local store (through the CMA's PinStore), resumably.

    Each pin is one background task that asks the owner (or a holder) for
    everything it is missing in one range request and hands the blocks, in
    order, to the CMA, which checks each against the manifest before it
    writes it (a block that does not match counts against the peer). The
    next block is read from the network while the last one is checked and
    written. Cut transfers resume from the verified blocks on disk, at the
    next round or after a restart.

    A pin nobody can serve when it is asked for (the owner and every holder
    offline, so not even the manifest can be had) is recorded all the same,
    as waiting, with the reason (``PinStore.wait``); like a paused pin it is
    tried again after each sync round in which its owner or a holder is
    online, and at start-up, until it completes.
    """

    def __init__(self, *, broker: Broker, pins: PinStore, store: RegistryStore, traffic: TrafficMeter) -> None:
        self._traffic = traffic
        self._broker = broker
        self._pins = pins
        self._store = store
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def pin(self, item_id: str) -> dict[str, Any]:
        own = await self._store.entry_by_item(item_id)
        if own is not None and own.row["node_id"] == self._broker.node_id:
            raise InvalidInput(f"item {item_id} is this node's own: only a peer's item can be pinned")
        remote = await self._broker.remote_item(item_id)  # NotFound (nothing recorded) if this node may not see it
        key = remote.item.content_hash
        row = await self._pins.get(key)
        if row is not None and row["state"] == "complete":
            return await self.status(key)
        try:
            manifest = await self._manifest(remote, row)
        except OwnerRefused:
            raise
        except (PeerUnreachable, NotFound, InvalidInput) as exc:
            # Nobody can serve it now: record it, to be tried again after each sync.
            await self._pins.wait(remote.item, self._unavailable(remote, exc))
            return await self.status(key)
        done = await self._pins.begin(remote.item, manifest)
        if done < remote.item.size:
            self._start(remote)
        elif (await self._pins.get(key) or {}).get("state") != "complete":
            await self._pins.finish(key)
        return await self.status(key)

    async def _manifest(self, remote: RemoteItem, row: dict[str, Any] | None) -> bytes:
        """The manifest a pin already holds, else the one its owner or a holder sends."""
        if row is not None and row["manifest"]:
            return bytes(row["manifest"])
        return await self._broker.manifest(remote)

    @staticmethod
    def _unavailable(remote: RemoteItem, exc: PrivNetworkError) -> str:
        """Why a pin waits, for ``pins``: who is offline (or what went wrong), and when it is tried again."""
        if not isinstance(exc, PeerUnreachable):  # a source answered, but not with the manifest
            return f"no member that has it could send it ({exc.message}); {RETRIED}"
        holders = len(remote.holders)
        if not holders:
            return f"{remote.owner_label} is offline; {RETRIED}"
        copies = "the member holding a copy is" if holders == 1 else f"the {holders} members holding a copy are"
        return f"{remote.owner_label} is offline and {copies} too; {RETRIED}"

    def _start(self, remote: RemoteItem) -> None:
        key = remote.item.content_hash
        if key in self._tasks and not self._tasks[key].done():
            return
        task = asyncio.create_task(self._fetch(remote), name=f"pin {remote.item.id}")
        self._tasks[key] = task

    async def _fetch(self, remote: RemoteItem) -> None:
        item = remote.item
        try:
            try:
                manifest = await self._manifest(remote, await self._pins.get(item.content_hash))
            except OwnerRefused as exc:
                log.info("pin of %s stopped: %s", item.id, exc.message)
                await self._pins.fail(item.content_hash, exc.message)
                return
            except (PeerUnreachable, NotFound, InvalidInput) as exc:
                reason = self._unavailable(remote, exc)
                log.info("pin of %s waits: %s", item.id, reason)
                await self._pins.fail(item.content_hash, reason)
                return
            done = await self._pins.begin(item, manifest)
            failure: PrivNetworkError | None = None
            for source in remote.sources() if done < item.size else []:
                try:
                    done = await self._fetch_from(source, item, done)
                    failure = None
                    break
                except (PeerUnreachable, NotFound, Forbidden) as exc:
                    if refused_by_owner(source, item, exc):
                        raise OwnerRefused(
                            f"{remote.owner_label} no longer shares this item with this node;"
                            " the partial copy goes at the next sync"
                        ) from None
                    failure = exc
                    done = int((await self._pins.get(item.content_hash) or {}).get("verified_bytes", done))
            if failure is not None:
                if isinstance(failure, PinSourceFailed):
                    raise failure
                raise PeerUnreachable(self._unavailable(remote, failure))
            await self._pins.finish(item.content_hash)
        except asyncio.CancelledError:
            raise
        except PrivNetworkError as exc:
            log.warning("pin of %s paused: %s", item.id, exc.message)
            await self._pins.fail(item.content_hash, exc.message)
        except Exception as exc:
            log.exception("pin of %s crashed", item.id)
            await self._pins.fail(item.content_hash, f"internal error: {type(exc).__name__}")

    async def _fetch_from(self, source: Source, item: ItemInfo, done: int) -> int:
        headers = {"Range": f"bytes={done}-{item.size - 1}"}
        async with self._broker.client.stream(source.url, source.path, headers=headers) as up:
            expected = f"bytes {done}-{item.size - 1}/{item.size}"
            if not (up.status == 206 and up.headers.get(hdrs.CONTENT_RANGE) == expected) and not (
                done == 0 and up.status == 200
            ):
                raise PinSourceFailed(f"{_who(source)} answered the pin with the wrong range; {RETRIED}")
            try:
                await self._copy(item, source, up, done)
            finally:
                await self._traffic.add(f"peer:{source.node_id}", "received", up.content.total_bytes)
        return item.size

    async def _copy(self, item: ItemInfo, source: Source, upstream: aiohttp.ClientResponse, done: int) -> None:
        bs = item.block_size
        blocks = BlockReader(upstream.content)
        index = done // bs
        writing: asyncio.Task[int] | None = None
        try:
            while done < item.size:
                length = min(bs, item.size - done)
                try:
                    parts = await blocks.read(length)
                except _CUT as exc:
                    if writing is not None:
                        await writing  # the block before the cut is good: keep it
                    log.info("pin of %s: %s stopped sending at block %d: %r", item.id, source.node_id, index, exc)
                    raise PinSourceFailed(f"{_who(source)} stopped sending at block {index}; {RETRIED}") from None
                if writing is not None:
                    await writing
                writing = asyncio.create_task(self._write(item, source, index, parts))
                done += length
                index += 1
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)

    async def _write(self, item: ItemInfo, source: Source, index: int, parts: list[memoryview]) -> int:
        try:
            return await self._pins.write_block(item.content_hash, index, parts)
        except InvalidInput:
            await self._broker.penalize(source.node_id, f"sent a corrupt block {index} of {item.id}")
            raise PinSourceFailed(f"{_who(source)} sent a corrupt block {index}; {RETRIED}") from None

    async def unpin(self, item_id: str) -> None:
        pins = await self._pins.list()
        row = next((p for p in pins if p["item_id"] == item_id), None)
        if row is None:
            raise NotFound(f"{item_id} is not pinned")
        task = self._tasks.pop(row["content_hash"], None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._pins.remove(row["content_hash"])

    async def status(self, content_hash: str) -> dict[str, Any]:
        row = await self._pins.get(content_hash)
        if row is None:
            raise NotFound("no such pin")
        return pin_json(row, fetching=content_hash in self._tasks and not self._tasks[content_hash].done())

    async def list(self) -> list[dict[str, Any]]:
        return [
            pin_json(r, fetching=r["content_hash"] in self._tasks and not self._tasks[r["content_hash"]].done())
            for r in await self._pins.list()
        ]

    async def reconcile(self) -> None:
        """After a sync: drop pins whose owner deleted or stopped sharing the item; resume the others."""
        for row in await self._pins.list():
            hit = await self._store.entry_by_item(row["item_id"])
            if hit is None or hit.row["node_id"] != row["owner"] or hit.row["content_hash"] != row["content_hash"]:
                log.info("unpinning %s: its owner no longer shares it with this node", row["title"])
                task = self._tasks.pop(row["content_hash"], None)
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                await self._pins.remove(row["content_hash"])
                continue
            if hit.row["visibility"] != row["visibility"]:
                await self._pins.set_visibility(row["content_hash"], hit.row["visibility"])
            if row["state"] != "complete":  # paused, or waiting: resume if its owner or a holder is online
                with contextlib.suppress(PrivNetworkError):
                    remote = await self._broker.remote_item(row["item_id"])
                    if any(source.online for source in remote.sources()):
                        self._start(remote)


def pin_state(row: dict[str, Any], *, fetching: bool) -> str:
    """complete; fetching (a task is under way); waiting (recorded while nobody could serve it,
    nothing fetched yet); paused (interrupted: it resumes from its verified blocks)."""
    if row["state"] == "complete":
        return "complete"
    if fetching:
        return "fetching"
    return "waiting" if row["state"] == "waiting" else "paused"


def pin_json(row: dict[str, Any], *, fetching: bool) -> dict[str, Any]:
    size = int(row["size"])
    done = int(row["verified_bytes"]) if row["state"] != "complete" else size
    return {
        "id": row["item_id"],
        "title": row["title"],
        "node": row["owner"],
        "content_hash": row["content_hash"],
        "size": size,
        "verified_bytes": done,
        "progress": round(done / size, 4) if size else 1.0,
        "state": pin_state(row, fetching=fetching),
        "error": row["error"],
        "last_watched_at": row["last_watched_at"],
    }
