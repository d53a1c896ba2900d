"""The CMA's HTTP handlers: parse, call the ContentManager, serialize."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web

from node import backup
from node.community import Community
from node.folders import WatchedFolders
from node.network import Network, verify_key_chain
from node.pins import Pins
from node.plex import PlexImport
from node.service import ContentManager
from node.serving import SEND_PIECE, FileServe, OpenFiles, attachment, download_name
from node.shares import ShareCut, Shares, ShareServe
from node.traffic import Traffic
from node.users import Users
from priv_network import __version__
from priv_network.config import Config, parse_duration
from priv_network.errors import ConfigError, InvalidInput, NotFound, Unauthorized
from priv_network.http import (
    content_headers,
    ended_early,
    int_param,
    json_body,
    peer_of,
    principal_of,
    require_admin,
)
from priv_network.identity import NodeIdentity, PublicIdentity, b64u, b64u_decode
from priv_network.interfaces import ContentBroker, ContentFile, IngestReport, NodeStatus
from priv_network.wire import ItemInfo, RosterEvent, check_item_id

log = logging.getLogger(__name__)

MAX_ANNOUNCED_EVENTS = 16
MAX_INBOX = 1000


def item_json(item: ItemInfo) -> dict[str, Any]:
    out = item.to_json()
    out["content_url"] = f"/api/v1/items/{item.id}/content"
    out["poster_url"] = f"/api/v1/items/{item.id}/poster" if item.has_poster else None
    return out


def status_json(status: NodeStatus) -> dict[str, Any]:
    return dict(status.__dict__)


def report_json(report: IngestReport) -> dict[str, Any]:
    return {
        "added": [item_json(i) for i in report.added],
        "existing": [item_json(i) for i in report.existing],
        "skipped_unchanged": report.skipped_unchanged,
        "failed": [{"path": p, "error": e} for p, e in report.failed],
        "warnings": [{"path": p, "warning": w} for p, w in report.warnings],
    }


# A URL naming content by its hash never changes what it serves; a URL naming an item
# does when a watched or imported file changes in place, so caches revalidate it (a
# 304 from the ETag when nothing changed).
IMMUTABLE = "private, max-age=31536000, immutable"
REVALIDATE = "private, no-cache"


def file_response(f: ContentFile, files: OpenFiles, *, cache: str | None = None) -> FileServe:
    headers = content_headers(f.mime)
    if cache:
        headers[hdrs.CACHE_CONTROL] = cache
    return FileServe(f.path, files, headers=headers)


def named(response: FileServe, item: ItemInfo) -> FileServe:
    """A type served as a download (not inline) is saved under the item's title, not the URL's "content"."""
    if hdrs.CONTENT_DISPOSITION in response.headers:
        response.headers[hdrs.CONTENT_DISPOSITION] = attachment(download_name(item.title, item.mime))
    return response


def ttl_seconds(body: dict[str, Any], default: str = "24h") -> float:
    """The request's "ttl" (a duration such as 30m, 24h, 7d, or seconds) in seconds."""
    ttl = body.get("ttl", default)
    try:
        seconds = parse_duration(ttl) if isinstance(ttl, str | int | float) else None
    except ConfigError:
        seconds = None
    if seconds is None:
        raise InvalidInput(f"ttl must be a duration such as 30m, 24h or 7d, not {str(ttl)[:40]!r}")
    return seconds


async def send_counted(request: web.Request, response: FileServe, traffic: Traffic, subject: str) -> FileServe:
    """Send a file now and count the bytes of its body that went out (none for HEAD, 304 or 416).

    A client that hangs up mid-body is normal (a player seeks or closes; a broker then drops its
    upstream): what was sent is counted, one DEBUG line says so, and the response goes back to
    aiohttp with its connection closed, which aiohttp finishes quietly, as it does when a client
    leaves a response it sends itself (the local content endpoint's).
    """
    response.send_piece = SEND_PIECE  # so that a hang-up still tells how much went out
    try:
        await response.prepare(request)
    except ConnectionError as exc:
        if not isinstance(exc, ShareCut):  # a cut share logs its own line
            log.debug(
                "%s %s: connection closed after %d of %s bytes (%s)",
                request.method,
                request.path,
                response.body_sent,
                response.content_length,
                str(exc) or type(exc).__name__,
            )
        ended_early(request, response)
    finally:
        await traffic.add(subject, "sent", response.body_sent)
    return response


class ShareApi:
    """Share links: created and managed by the owner; opened by anyone with the link."""

    def __init__(self, shares: Shares, traffic: Traffic, files: OpenFiles) -> None:
        self.shares = shares
        self.traffic = traffic
        self.files = files

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/v1/shares", self.create),
            web.get("/api/v1/shares", self.list_shares),
            web.delete("/api/v1/shares/{id}", self.revoke),
            web.get("/s/{token}", self.download),
        ]

    async def create(self, request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request)
        item_id = body.get("id")
        if not isinstance(item_id, str):
            raise InvalidInput("id must be an item ID")
        seconds = ttl_seconds(body)
        downloads = body.get("downloads")
        if downloads is not None and (isinstance(downloads, bool) or not isinstance(downloads, int)):
            raise InvalidInput("downloads must be a whole number")
        share = await self.shares.create(check_item_id(item_id), seconds, downloads)
        return web.json_response(share, status=201)

    async def list_shares(self, request: web.Request) -> web.Response:
        require_admin(request)
        return web.json_response({"shares": await self.shares.list()})

    async def revoke(self, request: web.Request) -> web.Response:
        require_admin(request)
        await self.shares.revoke(request.match_info["id"])
        return web.json_response({"revoked": request.match_info["id"]})

    async def download(self, request: web.Request) -> web.StreamResponse:
        shared = await self.shares.open(request.match_info["token"])
        f, share_id = shared.file, shared.share_id
        response = ShareServe(f, self.files, self.shares, share_id, headers=content_headers(f.mime), left=shared.left)
        response.headers[hdrs.CONTENT_DISPOSITION] = attachment(shared.name)  # a download, whatever its type
        response.headers[hdrs.CACHE_CONTROL] = "no-store"
        # A request for more than the link has left is cut where the allowance ends (ShareCut):
        # the client sees a short body, as when it hangs up itself.
        return await send_counted(request, response, self.traffic, f"share:{share_id}")


def absolute_path(path: str) -> Path:
    """A path the API was given: absolute, as the node resolves nothing against its own working folder."""
    if "\0" in path:
        raise InvalidInput("a path must not contain a NUL character")
    if not Path(path).is_absolute():
        raise InvalidInput(
            f"paths must be absolute (the node does not resolve them against its own folder): {path[:200]!r}"
        )
    return Path(path)


class ItemsApi:
    """Items of this node; a peer's items (known from the registry) go through the broker."""

    def __init__(
        self,
        cma: ContentManager,
        pins: Pins,
        traffic: Traffic,
        community: Community,
        broker: ContentBroker | None = None,
        *,
        files: OpenFiles,
    ) -> None:
        self.files = files
        self.community = community
        self.cma = cma
        self.pins = pins
        self.traffic = traffic
        self.broker = broker

    async def _is_local(self, item_id: str) -> bool:
        try:
            await self.cma.get_item(item_id)
        except NotFound:
            if self.broker is None:
                raise
            return False
        return True

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/api/v1/items", self.list_items),
            web.post("/api/v1/items", self.add_items),
            web.get("/api/v1/items/{id}", self.get_item),
            web.patch("/api/v1/items/{id}", self.update_item),
            web.delete("/api/v1/items/{id}", self.remove_item),
            web.get("/api/v1/items/{id}/content", self.content),
            web.get("/api/v1/items/{id}/poster", self.poster),
            web.get("/api/v1/status", self.status),
        ]

    async def list_items(self, request: web.Request) -> web.Response:
        limit = int_param(request, "limit", 100, 1, 1000)
        offset = int_param(request, "offset", 0, 0, 10**9)
        items = await self.cma.list_items(limit, offset)
        return web.json_response({"items": [item_json(i) for i in items]})

    async def add_items(self, request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request)
        paths = body.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
            raise InvalidInput("paths must be a list of file or folder paths")
        for path in paths:
            absolute_path(path)
        title = body.get("title")
        if title is not None and not isinstance(title, str):
            raise InvalidInput("title must be a string")
        # New items are private unless told; items already stored keep theirs unless told explicitly.
        visibility = body.get("visibility", "private")
        if not isinstance(visibility, str):
            raise InvalidInput("visibility must be a string")
        visibility = await self.cma.check_audience(visibility)
        report = await self.cma.ingest_paths(paths, title, visibility)
        changed = await self.cma.apply_visibility(report, visibility) if "visibility" in body else []
        out = report_json(report)
        out["visibility_changed"] = [{"id": i, "was": was, "now": now} for i, was, now in changed]
        return web.json_response(out, status=201 if report.added else 200)

    async def get_item(self, request: web.Request) -> web.Response:
        item_id = request.match_info["id"]
        if await self._is_local(item_id):
            out = item_json(await self.cma.get_item(item_id))
            out["views"] = (await self.community.view_totals([item_id])).get(item_id, 0)
            return web.json_response(out)
        assert self.broker is not None
        item = await self.broker.item(item_id)
        out = item_json(item)
        out["views"] = await self.broker.views(item)
        return web.json_response(out)

    async def update_item(self, request: web.Request) -> web.Response:
        require_admin(request)
        item_id = request.match_info["id"]
        await self.cma.get_item(item_id)
        body = await json_body(request)
        unknown = set(body) - {"title", "visibility"}
        if unknown:
            raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}")
        item = None
        if "title" in body:
            if not isinstance(body["title"], str):
                raise InvalidInput("title must be a string")
            item = await self.cma.set_title(item_id, body["title"])
        if "visibility" in body:
            if not isinstance(body["visibility"], str):
                raise InvalidInput("visibility must be a string")
            visibility = await self.cma.check_audience(body["visibility"])
            item = await self.cma.set_visibility(item_id, visibility)
        return web.json_response(item_json(item or await self.cma.get_item(item_id)))

    async def remove_item(self, request: web.Request) -> web.Response:
        require_admin(request)
        await self.cma.remove_item(request.match_info["id"])
        return web.json_response({"removed": request.match_info["id"]})

    async def content(self, request: web.Request) -> web.StreamResponse:
        principal_of(request)
        item_id = request.match_info["id"]
        try:
            f = await self.cma.content_file(item_id)  # one lookup: local items are the common case
        except NotFound:
            if self.broker is None:
                raise
            remote = await self.broker.item(item_id)
            pinned = await self.pins.local_file(remote.content_hash)
            if pinned is not None:
                return named(file_response(pinned, self.files, cache=REVALIDATE), remote)
            return await self.broker.stream(request, item_id)
        response = file_response(f, self.files, cache=REVALIDATE)
        if hdrs.CONTENT_DISPOSITION in response.headers:  # only types sent as a download need the item
            named(response, await self.cma.get_item(item_id))
        return response

    async def poster(self, request: web.Request) -> web.StreamResponse:
        principal_of(request)
        item_id = request.match_info["id"]
        if not await self._is_local(item_id):
            assert self.broker is not None
            return await self.broker.poster(item_id)
        f = await self.cma.poster_file(item_id)
        if not f.path.exists():
            raise NotFound("the poster is missing from the store")
        return file_response(f, self.files, cache=REVALIDATE)

    async def status(self, request: web.Request) -> web.Response:
        principal_of(request)
        status = status_json(await self.cma.status())
        status["traffic"] = await self.traffic.totals()
        return web.json_response(status)


class FederationApi:
    """The node-to-node endpoints. All but the node document and join are signed
    (checked by ``priv_network.http.federation_middleware`` before these run)."""

    def __init__(
        self,
        *,
        cma: ContentManager,
        network: Network,
        identity: NodeIdentity,
        verify_with_key: Callable[..., str],
        traffic: Traffic,
        pins: Pins,
        community: Community,
        files: OpenFiles,
    ) -> None:
        self.files = files
        self.traffic = traffic
        self.pins = pins
        self.community = community
        self.cma = cma
        self.network = network
        self.identity = identity
        self.verify_with_key = verify_with_key

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/federation/v1/node", self.node_document),
            web.get("/federation/v1/catalog", self.catalog),
            web.get("/federation/v1/content/{id}", self.content),
            web.get("/federation/v1/manifest/{id}", self.manifest),
            web.get("/federation/v1/blobs/{hash}", self.blob),
            web.get("/federation/v1/blobs/{hash}/manifest", self.blob_manifest),
            web.get("/federation/v1/poster/{id}", self.poster),
            web.post("/federation/v1/join", self.join),
            web.post("/federation/v1/roster", self.roster),
            web.post("/federation/v1/inbox", self.inbox),
        ]

    async def node_document(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "node_id": self.identity.node_id,
                "name": self.cma.node_name,
                "public_key": b64u(self.identity.public.public_key),
                "key_type": "ed25519",
                "url": self.cma.node_url,
                "software": "priv_network",
                "version": __version__,
                "protocol": 1,
                "key_chain": await self.network.key_chain() if self.identity.rotated else [],
            }
        )

    async def catalog(self, request: web.Request) -> web.Response:
        peer = peer_of(request)
        since = int_param(request, "since", 0, 0, 2**62)
        limit = int_param(request, "limit", 1000, 1, 5000)
        page = await self.cma.changes(since, limit, viewer=peer)
        return web.json_response(page.to_json())

    async def content(self, request: web.Request) -> web.StreamResponse:
        peer = peer_of(request)
        f = await self.cma.content_file_for(request.match_info["id"], peer)
        return await send_counted(request, file_response(f, self.files, cache=REVALIDATE), self.traffic, f"peer:{peer}")

    async def manifest(self, request: web.Request) -> web.Response:
        item, blocks = await self.cma.manifest_for(request.match_info["id"], peer_of(request))
        return web.json_response(
            {
                "id": item.id,
                "block_size": item.block_size,
                "size": item.size,
                "manifest_hash": item.manifest_hash,
                "blocks": base64.b64encode(blocks).decode("ascii"),
            }
        )

    async def blob(self, request: web.Request) -> web.StreamResponse:
        """A verified copy this node holds (pinned), for members the owner's rules let see it."""
        peer = peer_of(request)
        f = await self.pins.file_for(request.match_info["hash"], peer)
        return await send_counted(request, file_response(f, self.files, cache=IMMUTABLE), self.traffic, f"peer:{peer}")

    async def blob_manifest(self, request: web.Request) -> web.Response:
        peer = peer_of(request)
        await self.pins.file_for(request.match_info["hash"], peer)
        row = await self.pins.get(request.match_info["hash"])
        assert row is not None
        return web.json_response(
            {
                "id": row["item_id"],
                "block_size": row["block_size"],
                "size": row["size"],
                "manifest_hash": row["manifest_hash"],
                "blocks": base64.b64encode(row["manifest"]).decode("ascii"),
            }
        )

    async def poster(self, request: web.Request) -> web.StreamResponse:
        f = await self.cma.poster_file_for(request.match_info["id"], peer_of(request))
        return file_response(f, self.files)

    async def join(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        raw_key = body.get("public_key")
        if not isinstance(raw_key, str):
            raise InvalidInput("join needs the joiner's public_key")
        try:
            key = PublicIdentity.from_public_bytes(b64u_decode(raw_key)).public_key
        except ValueError:
            raise InvalidInput("malformed public_key") from None
        node = body.get("node")
        node_id = node.get("node_id") if isinstance(node, dict) else None
        if not isinstance(node_id, str):
            raise InvalidInput("join needs the joiner's node with its node_id")
        raw = await request.read()
        signer = self.verify_with_key(
            request.method, self.cma.node_url + request.raw_path, request.headers, raw, key=key
        )
        if signer != node_id:
            raise Unauthorized("the join request is not signed by the joining node's key")
        # The key is the node ID's own (its fingerprint), or the one it rotated to: its key chain shows it.
        if not verify_key_chain(node_id, key, body.get("key_chain")):
            raise Unauthorized("the joining node's key does not belong to its node ID (bad or missing key chain)")
        return web.json_response(await self.network.accept_join(body, PublicIdentity(node_id, key)))

    async def roster(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        raw = body.get("events")
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_ANNOUNCED_EVENTS:
            raise InvalidInput(f"events must be a list of 1-{MAX_ANNOUNCED_EVENTS} roster events")
        events = [RosterEvent.from_json(e) for e in raw]
        added = await self.network.apply_roster_events(events, f"an announcement from {request.remote}", vouched=False)
        if added:
            await self.cma.notify_changed()
        return web.json_response({"members_added": added})

    async def inbox(self, request: web.Request) -> web.Response:
        """Comments, edits, deletions and views that members deliver to this owner.

        Each message carries its own ID (the idempotency key): a redelivered
        message is accepted again without effect. The answer says, per ID,
        "ok" or "rejected: why" (a rejection is final; the sender stops retrying).
        """
        peer = peer_of(request)
        body = await json_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not 0 < len(messages) <= MAX_INBOX:
            raise InvalidInput(f"messages must be a list of 1-{MAX_INBOX} messages")
        known = self.network.peer(peer)
        node_name = known.name if known is not None else peer
        results = await self.community.receive(messages, peer=peer, node_name=node_name)
        return web.json_response({"results": results})


class NetworkApi:
    """Admin endpoints for the group: invites, joining, members."""

    def __init__(self, network: Network, key_path: Path) -> None:
        self.network = network
        self.key_path = key_path

    async def rotate_key(self, request: web.Request) -> web.Response:
        require_admin(request)
        event = await self.network.rotate_key(self.key_path)
        return web.json_response({"node_id": event.subject, "public_key": event.public_key, "event": event.id})

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/v1/network/invites", self.create_invite),
            web.post("/api/v1/network/join", self.join),
            web.get("/api/v1/network/members", self.members),
            web.delete("/api/v1/network/members/{id}", self.remove_member),
            web.post("/api/v1/keys/rotate", self.rotate_key),
        ]

    async def create_invite(self, request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request)
        seconds = ttl_seconds(body)
        uses = body.get("uses", 1)
        if isinstance(uses, bool) or not isinstance(uses, int):
            raise InvalidInput("uses must be a whole number")
        token = await self.network.create_invite(seconds, uses)
        return web.json_response({"token": token, "ttl": seconds, "uses": uses}, status=201)

    async def join(self, request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request)
        token = body.get("token")
        if not isinstance(token, str):
            raise InvalidInput("token must be a string")
        return web.json_response(await self.network.join(token))

    async def members(self, request: web.Request) -> web.Response:
        principal_of(request)
        rows = await self.network.list_members()
        return web.json_response(
            {
                "members": [
                    {
                        "node_id": r["node_id"],
                        "name": r["name"],
                        "url": r["url"],
                        "active": bool(r["active"]),
                        "last_seen_at": r["last_seen_at"],
                    }
                    for r in rows
                ]
            }
        )

    async def remove_member(self, request: web.Request) -> web.Response:
        require_admin(request)
        event = await self.network.remove_member(request.match_info["id"])
        return web.json_response({"removed": event.subject, "event": event.id})


class ImportApi:
    """Plex import and watched-folder scans (owner only)."""

    def __init__(self, plex: PlexImport, folders: WatchedFolders) -> None:
        self.plex = plex
        self.folders = folders

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/v1/import/plex", self.import_plex),
            web.post("/api/v1/scan", self.scan),
        ]

    async def import_plex(self, request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request)
        url, token, section = body.get("url"), body.get("token"), body.get("section")
        visibility = body.get("visibility", "private")
        if not isinstance(url, str) or not isinstance(token, str):
            raise InvalidInput("url and token are required")
        if section is not None and not isinstance(section, str):
            raise InvalidInput("section must be a section name")
        if not isinstance(visibility, str):
            raise InvalidInput("visibility must be a string")
        visibility = await self.plex.check_audience(visibility)
        report = await self.plex.run(url.strip(), token.strip(), section or None, visibility)
        return web.json_response(report.to_json())

    async def scan(self, request: web.Request) -> web.Response:
        require_admin(request)
        if not self.folders.folders:
            raise InvalidInput("no watched folders: list them in [folders] paths in config.toml")
        return web.json_response(await self.folders.scan())


class BackupApi:
    """Backups of the running node (it holds the data folder's lock, so it writes them)."""

    def __init__(self, config: Config, node_id: str, executor: Executor) -> None:
        self.config = config
        self.node_id = node_id
        self.executor = executor

    def routes(self) -> list[web.AbstractRouteDef]:
        return [web.post("/api/v1/backup", self.create)]

    async def create(self, request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request)
        path, with_store = body.get("path"), body.get("store", False)
        if not isinstance(path, str) or not path.strip():
            raise InvalidInput("path must name the archive to write")
        dest = absolute_path(path)
        if not isinstance(with_store, bool):
            raise InvalidInput("store must be true or false")
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self.executor, lambda: backup.backup(self.config, self.node_id, dest, with_store=with_store)
        )
        return web.json_response(result, status=201)


class UsersApi:
    """Web app users (the CLI's `user add`) and API tokens (`token create|list|revoke`)."""

    def __init__(self, users: Users) -> None:
        self.users = users

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.post("/api/v1/users", self.create),
            web.get("/api/v1/users", self.list_users),
            web.post("/api/v1/tokens", self.create_token),
            web.get("/api/v1/tokens", self.list_tokens),
            web.delete("/api/v1/tokens/{id}", self.revoke_token),
        ]

    async def create_token(self, request: web.Request) -> web.Response:
        """``{"user": NAME}``: a token acting as that existing user, with its rights (``admin`` may only
        confirm them). Without ``user``: a token for principal ``name`` (a label, default "api") with
        the rights ``admin`` says."""
        require_admin(request)
        body = await json_body(request)
        admin = body.get("admin", False)
        if not isinstance(admin, bool):
            raise InvalidInput("admin must be true or false")
        if "user" in body:
            user = body["user"]
            if "name" in body:
                raise InvalidInput("give user (an existing user the token acts as) or name (a label), not both")
            if not isinstance(user, str):
                raise InvalidInput("user must be a user name")
            return web.json_response(await self.users.create_token(user, admin=admin), status=201)
        name = body.get("name", "api")
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise InvalidInput("name must be a short non-empty string")
        return web.json_response(await self.users.create_label_token(name.strip(), admin=admin), status=201)

    async def list_tokens(self, request: web.Request) -> web.Response:
        caller = require_admin(request)
        tokens = await self.users.list_tokens()
        for t in tokens:
            t["current"] = t["id"] == caller.token_id
        return web.json_response({"tokens": tokens})

    async def revoke_token(self, request: web.Request) -> web.Response:
        caller = require_admin(request)
        token_id = request.match_info["id"]
        revoked = await self.users.revoke_token(token_id)
        revoked["current"] = token_id == caller.token_id
        return web.json_response(revoked)

    async def create(self, request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request)
        name, password, admin = body.get("name"), body.get("password"), body.get("admin", False)
        if not isinstance(name, str) or not isinstance(password, str) or not isinstance(admin, bool):
            raise InvalidInput("name and password are text; admin is true or false")
        principal = await self.users.create(name, password, admin=admin)
        return web.json_response({"name": principal.name, "admin": principal.admin}, status=201)

    async def list_users(self, request: web.Request) -> web.Response:
        require_admin(request)
        return web.json_response({"users": await self.users.list()})
