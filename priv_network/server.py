"""The composition root: builds every part of a node and wires them together.

This is the only module that imports ``node``, ``registry`` and ``webapp``;
they meet here through the protocols in ``priv_network.interfaces``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncEngine

from node import backup as node_backup
from node.api import BackupApi, FederationApi, ImportApi, ItemsApi, NetworkApi, ShareApi, UsersApi
from node.blobs import BlobStore
from node.community import Community
from node.downloads import Downloads, DownloadsApi, download_json
from node.folders import WatchedFolders
from node.network import Network
from node.pins import Pins
from node.plex import PlexImport
from node.service import ContentManager
from node.serving import OpenFiles
from node.shares import Shares
from node.store import CmaStore
from node.traffic import Traffic
from node.uploads import Uploads, UploadsApi, tus_resumable_header
from node.users import Users
from priv_network import __version__, db
from priv_network.config import Config
from priv_network.errors import NotFound, PrivNetworkError
from priv_network.http import (
    auth_middleware,
    error_middleware,
    federation_middleware,
    require_admin,
    security_headers_middleware,
)
from priv_network.identity import NodeIdentity
from priv_network.interfaces import FederationGate, Principal, SearchFilters
from priv_network.keys import AUTHENTICATOR, CONFIG, FEDERATION_GATE, METRICS
from priv_network.observability import Metrics
from priv_network.peerclient import PeerClient
from priv_network.signing import Signer, Verifier
from priv_network.wire import FeedPage, check_item_id
from registry.api import CommunityApi, PinsApi, SearchApi, hit_json
from registry.community import CommunityService
from registry.service import Registry
from registry.store import RegistryStore
from registry.transfer import Broker, Pinner
from webapp.views import Pages

log = logging.getLogger("priv_network.server")

# How much of a peer's response body the client buffers before it stops reading the socket
# (aiohttp's default is 64 KiB). A pin takes a peer's blocks chunk by chunk as they arrive: with
# the default, the socket was paused and resumed for every few chunks (bench/broker.py).
PEER_READ_BUFSIZE = 1024 * 1024

NODE: web.AppKey[Node] = web.AppKey("node")


class LocalCatalog:
    """This node's own feed, read in-process by its manager (the same path as a peer's)."""

    def __init__(self, cma: ContentManager) -> None:
        self.cma = cma
        self.node_id = cma.node_id

    async def fetch_changes(self, since: int, limit: int) -> FeedPage:
        return await self.cma.changes(since, limit)


class WebBackendAdapter:
    """The web app's view of the node (``WebBackend``), over the CMA and the manager."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def has_users(self) -> bool:
        return await self.node.users.has_users()

    async def create_owner(self, name: str, password: str) -> Principal:
        return await self.node.users.create(name, password, admin=True, first_run=True)

    async def login(self, name: str, password: str, address: str) -> Principal:
        return await self.node.users.login(name, password, address)

    async def token_login(self, token: str) -> Principal | None:
        return await self.node.cma.authenticate(token)

    async def create_session(self, principal: Principal) -> str:
        return await self.node.cma.create_session(principal)

    async def end_session(self, token: str) -> None:
        await self.node.cma.end_session(token)

    async def prefs(self, user: str) -> dict[str, Any]:
        return await self.node.users.prefs(user)

    async def set_prefs(self, user: str, changes: dict[str, Any]) -> dict[str, Any]:
        return await self.node.users.set_prefs(user, changes)

    async def login_history(self, user: str) -> list[dict[str, Any]]:
        return await self.node.users.history(user)

    async def search(self, query: str, limit: int, filters: SearchFilters) -> list[dict[str, Any]]:
        registry = self.node.registry
        hits = await (registry.search(query, limit, filters) if query else registry.recent(limit, filters))
        return [hit_json(h) for h in hits]

    async def item(self, item_id: str) -> dict[str, Any]:
        check_item_id(item_id)
        hits = await self.node.registry.search_ids([item_id])
        if not hits:
            raise NotFound(f"no item {item_id}")
        return hit_json(hits[0])

    async def comments(self, item_id: str, user: str) -> list[dict[str, Any]]:
        return await self.node.community_service.thread(item_id, user)

    async def post_comment(self, user: str, item_id: str, body: str, parent: str | None) -> dict[str, Any]:
        return await self.node.community_service.post(user, item_id, body, parent)

    async def history(self, user: str) -> list[dict[str, Any]]:
        return await self.node.community_service.history(user)

    async def peers(self) -> list[dict[str, Any]]:
        return await self.node.registry.peers()

    async def downloads(self) -> list[dict[str, Any]]:
        return [download_json(r) for r in await self.node.downloads.list()]

    async def pins(self) -> list[dict[str, Any]]:
        return await self.node.pinner.list()

    async def status(self) -> dict[str, Any]:
        status = dict((await self.node.cma.status()).__dict__)
        status["traffic"] = await self.node.traffic.totals()
        status["traffic_history"] = await self.node.traffic.history(48)
        status["outbox"] = len(await self.node.registry_store.outbox_all())
        status["min_free"] = self.node.config.store.min_free
        return status


class Node:
    """Every long-lived object of one node, built once."""

    def __init__(self, config: Config, identity: NodeIdentity, engine: AsyncEngine | None = None) -> None:
        self.config = config
        self.identity = identity
        self.engine = engine or db.create_engine(config.database_url)
        self.executor = ThreadPoolExecutor(max_workers=config.store.hash_workers + 2, thread_name_prefix="pn-worker")
        self.blobs = BlobStore(config.store_path, config.store.block_size, config.store.min_free)
        self.open_files = OpenFiles()  # blob files kept open for the content endpoints
        self.cma_store = CmaStore(self.engine)
        self.cma = ContentManager(
            store=self.cma_store,
            blobs=self.blobs,
            executor=self.executor,
            node_id=identity.node_id,
            node_name=config.node.name,
            node_url=config.node.public_url,
            hash_workers=config.store.hash_workers,
        )
        self.network = Network(
            store=self.cma_store,
            identity=identity,
            name=config.node.name,
            url=config.node.public_url,
            notify=self.cma.notify_changed,
        )
        self.metrics = Metrics()
        self.registry_store = RegistryStore(self.engine)
        self.registry = Registry(
            store=self.registry_store,
            own=LocalCatalog(self.cma),
            directory=self.network,
            node_id=identity.node_id,
            name=config.node.name,
            url=config.node.public_url,
            page_size=config.sync.page_size,
            max_concurrent=config.sync.max_concurrent,
            backoff_min=config.sync.backoff_min,
            backoff_max=config.sync.backoff_max,
            metrics=self.metrics,
        )
        self.traffic = Traffic(self.cma_store)
        self.broker = Broker(
            store=self.registry_store,
            node_id=identity.node_id,
            to_item=self.registry.to_item,
            penalize=self.registry.penalize,
            traffic=self.traffic,
        )
        self.pins = Pins(store=self.cma_store, blobs=self.blobs, executor=self.executor, budget=config.store.pin_budget)
        self.uploads = Uploads(
            store=self.cma_store,
            blobs=self.blobs,
            cma=self.cma,
            executor=self.executor,
            max_size=config.uploads.max_size,
            expiry=config.uploads.expiry,
        )
        self.downloads = Downloads(
            store=self.cma_store,
            blobs=self.blobs,
            cma=self.cma,
            workers=config.downloads.workers,
            allow_private=config.downloads.allow_private,
            allowed_networks=config.downloads.allowed_networks,
            max_filesize=config.downloads.max_filesize,
            socket_timeout=config.downloads.socket_timeout,
        )
        self.plex = PlexImport(cma=self.cma, executor=self.executor, mode=config.plex.mode)
        self.folders = WatchedFolders(
            cma=self.cma, folders=list(config.folders.paths), visibility=config.folders.visibility
        )
        self.users = Users(store=self.cma_store, cma=self.cma)
        self.shares = Shares(
            store=self.cma_store,
            cma=self.cma,
            identity=identity,
            url=config.node.public_url,
            owner_name=self.owner_name,
        )
        self.pinner = Pinner(broker=self.broker, pins=self.pins, store=self.registry_store, traffic=self.traffic)
        self.registry.after_round(self.broker.forget)  # before reconcile, which asks the broker
        self.registry.after_round(self.pinner.reconcile)
        self.community = Community(store=self.cma_store, cma=self.cma, max_length=config.community.comment_max_length)
        self.community_service = CommunityService(
            store=self.registry_store,
            local=self.community,
            directory=self.network,
            node_id=identity.node_id,
            node_name=config.node.name,
            view_threshold=config.community.view_threshold,
            view_window=config.community.view_window,
            max_length=config.community.comment_max_length,
            refresh=self.registry.refresh_peer,
        )
        self.registry.after_round(self._deliver_outbox)
        self.cma.add_listener(self.registry.on_local_change)
        self.signer = Signer(identity)
        self.verifier = Verifier(self.network.public_key_for, window=config.network.signature_window)

    def set_http(self, session: aiohttp.ClientSession, client: PeerClient) -> None:
        self._session, self._client = session, client

    def session(self) -> aiohttp.ClientSession:
        return self._session

    def client(self) -> PeerClient:
        return self._client

    async def gauges(self) -> list[tuple[str, dict[str, str], float]]:
        status = await self.cma.status()
        out: list[tuple[str, dict[str, str], float]] = [
            ("priv_network_items", {}, status.items),
            ("priv_network_store_bytes", {}, status.store_bytes),
            ("priv_network_free_bytes", {}, status.free_bytes),
            ("priv_network_outbox_messages", {}, len(await self.registry_store.outbox_all())),
            ("priv_network_pins", {}, len(await self.pins.list())),
        ]
        queue = await self.downloads.list()
        for state in ("pending", "processing", "error"):
            out.append(("priv_network_downloads", {"state": state}, sum(1 for d in queue if d["state"] == state)))
        for peer in await self.registry.peers():
            out.append(("priv_network_peer_online", {"peer": peer["node_id"]}, 1 if peer["online"] else 0))
            out.append(("priv_network_peer_failures", {"peer": peer["node_id"]}, peer["failures"]))
        for subject, totals in (await self.traffic.totals()).items():
            for direction, n in totals.items():
                out.append(("priv_network_bytes_total", {"subject": subject, "direction": direction}, n))
        return out

    async def _deliver_outbox(self) -> None:
        await self.community_service.deliver()

    async def owner_name(self, item_id: str) -> str | None:
        """The name of the member owning a peer's item the registry knows (Shares names it when refusing)."""
        hits = await self.registry.search_ids([item_id])
        return hits[0].node_name if hits and not hits[0].local else None

    async def peer_seen(self, node_id: str) -> None:
        await self.network.peer_seen(node_id)
        if await self.registry.peer_seen(node_id):
            await self.community_service.owner_back(node_id)

    async def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        await self.engine.dispose()


async def initialize(config: Config, identity: NodeIdentity) -> str:
    """Create the database at the latest revision and the first admin token."""
    node = Node(config, identity)
    try:
        await db.upgrade(node.engine)
        await node.cma.bootstrap()
        return await node.cma.create_token("admin", admin=True, kind="admin")
    finally:
        await node.close()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _doctor(request: web.Request) -> web.Response:
    """Checks only the running node can make: its public URL and its clock against its peers'."""
    require_admin(request)
    node: Node = request.app[NODE]
    current, latest = await db.current_revision(node.engine), db.head_revision()
    checks: list[dict[str, Any]] = [
        {
            "ok": current == latest,
            "what": f"database schema at revision {current} (latest {latest})",
            "fix": "run `priv-network db upgrade`",
        }
    ]
    url = node.config.node.public_url
    try:
        doc = await node.client().get(url, "/federation/v1/node", signed=False)
        same = isinstance(doc, dict) and doc.get("node_id") == node.identity.node_id
        checks.append(
            {
                "ok": same,
                "what": f"public URL {url} reaches this node" if same else f"public URL {url} answers as another node",
                "fix": "set [node] url in config.toml",
            }
        )
    except PrivNetworkError as exc:
        checks.append(
            {
                "ok": False,
                "what": f"public URL {url} is not reachable: {exc.message}",
                "fix": "peers use this address; set [node] url (and open the port)",
            }
        )
    for peer in await node.network.active_peers():
        try:
            async with node.session().get(f"{peer.url}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                date = resp.headers.get("Date")
            skew = abs(time.time() - parsedate_to_datetime(date).timestamp()) if date else 0.0
            window = node.config.network.signature_window
            checks.append(
                {
                    "ok": skew < window / 2,
                    "what": f"clock vs {peer.name}: {skew:.0f}s apart",
                    "fix": f"synchronise the clocks (NTP); signed requests allow {window:.0f}s",
                }
            )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            checks.append({"ok": None, "what": f"{peer.name} at {peer.url} not reachable ({type(exc).__name__})"})
    return web.json_response({"checks": checks})


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus text format; owner (admin) credentials only."""
    require_admin(request)
    return web.Response(text=await request.app[METRICS].render(), content_type="text/plain", charset="utf-8")


def create_app(config: Config, identity: NodeIdentity, *, upgrade: bool = False) -> web.Application:
    node = Node(config, identity)
    app = web.Application(
        middlewares=[error_middleware, security_headers_middleware, federation_middleware, auth_middleware],
        client_max_size=1024**2,
    )
    app.on_response_prepare.append(tus_resumable_header)
    app[CONFIG] = config
    app[AUTHENTICATOR] = node.cma
    app[METRICS] = node.metrics
    node.metrics.add_gauges(node.gauges)
    app[FEDERATION_GATE] = FederationGate(
        verify=node.verifier.verify, own_url=config.node.public_url, peer_seen=node.peer_seen
    )

    async def database(app: web.Application) -> AsyncIterator[None]:
        try:
            if upgrade:
                await db.upgrade(node.engine)
            await db.check_schema(node.engine)
        except BaseException:
            await node.close()
            raise
        yield
        await node.close()
        log.info("database closed")

    async def http_client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            headers={"User-Agent": f"priv_network/{__version__}"},
            connector=aiohttp.TCPConnector(limit=64, limit_per_host=8),
            read_bufsize=PEER_READ_BUFSIZE,
        ) as session:
            client = PeerClient(session, node.signer, timeout=config.sync.timeout)
            node.set_http(session, client)
            node.network.set_client(client)
            node.registry.set_client(client)
            node.broker.set_client(client)
            node.community_service.set_client(client)
            yield

    async def services(app: web.Application) -> AsyncIterator[None]:
        marker = config.data_dir / node_backup.NEW_FEED_MARKER
        await node.cma.start(new_feed=marker.exists())
        marker.unlink(missing_ok=True)
        await node.network.start()
        await node.registry.start()
        await node.pinner.reconcile()
        node.community_service.deliver_soon()
        await node.downloads.start()
        yield
        await node.downloads.stop()
        await node.community_service.close()
        await node.pinner.close()
        await node.pins.close()  # records how far each fetch got
        await node.registry.close()
        await node.traffic.close()  # the counters not yet written
        await node.open_files.close()

    async def scheduler(app: web.Application) -> AsyncIterator[None]:
        sched = AsyncIOScheduler()
        jitter = max(1, int(config.sync.interval * config.sync.jitter))
        running: set[asyncio.Task[Any]] = set()
        stopping = False

        def job(name: str, work: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
            """A named job that never crashes the scheduler and that shutdown can wait for."""

            async def run() -> None:
                task = asyncio.current_task()
                if stopping or task is None:
                    return
                running.add(task)
                try:
                    await work()
                except PrivNetworkError as exc:
                    log.warning("%s failed: %s", name, exc.message)
                except Exception:
                    log.exception("%s crashed", name)
                finally:
                    running.discard(task)

            return run

        def every(
            name: str,
            seconds: float,
            work: Callable[[], Awaitable[Any]],
            *,
            soon: bool = False,
            spread: int | None = None,
        ) -> None:
            extra: dict[str, Any] = {}
            if soon:  # (an explicit next_run_time=None would create the job paused)
                extra["next_run_time"] = datetime.now(UTC) + timedelta(seconds=5)
            sched.add_job(
                job(name, work),
                "interval",
                seconds=seconds,
                jitter=spread,
                name=name,
                max_instances=1,
                coalesce=True,
                **extra,
            )

        every("sync round", config.sync.interval, lambda: node.registry.sync_all(force=False), spread=jitter)
        if config.sync.at_start:
            # Every member, backed off or not: any of them may be back too, and each learns
            # from the signed poll that this node is (peer_seen), without waiting for its own round.
            sched.add_job(
                job("start-up sync round", lambda: node.registry.sync_all(force=True)),
                "date",
                run_date=datetime.now(UTC) + timedelta(seconds=2),
                name="start-up sync round",
            )
        every("sweep of expired uploads", 600, node.uploads.sweep, soon=True)
        if config.folders.paths:
            every("watched folder scan", config.folders.interval, node.folders.scan, soon=True)
        if config.plex.url and config.plex.token and config.plex.interval > 0:
            every(
                "scheduled Plex import",
                config.plex.interval,
                lambda: node.plex.run(
                    config.plex.url, config.plex.token, config.plex.section or None, config.plex.visibility
                ),
            )
        sched.start()
        log.info("scheduler started: sync every %.0fs (+ up to %ds jitter)", config.sync.interval, jitter)
        yield
        # Let running jobs finish before the database and the HTTP client close under them.
        stopping = True
        sched.pause()
        await asyncio.gather(*running, return_exceptions=True)
        sched.shutdown(wait=False)

    app.cleanup_ctx.extend([database, http_client, services, scheduler])
    for routes in (
        ItemsApi(node.cma, node.pins, node.traffic, node.community, node.broker, files=node.open_files).routes(),
        ShareApi(node.shares, node.traffic, node.open_files).routes(),
        UploadsApi(node.uploads).routes(),
        DownloadsApi(node.downloads).routes(),
        ImportApi(node.plex, node.folders).routes(),
        BackupApi(config, identity.node_id, node.executor).routes(),
        PinsApi(node.pinner).routes(),
        FederationApi(
            cma=node.cma,
            network=node.network,
            identity=identity,
            verify_with_key=node.verifier.verify,
            traffic=node.traffic,
            pins=node.pins,
            community=node.community,
            files=node.open_files,
        ).routes(),
        CommunityApi(node.community_service).routes(),
        NetworkApi(node.network, config.key_path).routes(),
        SearchApi(node.registry).routes(),
        Pages(WebBackendAdapter(node), config.node.name, node.identity.node_id).routes(),
        UsersApi(node.users).routes(),
    ):
        app.add_routes(routes)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/v1/doctor", _doctor)
    app[NODE] = node

    async def close_streams(app: web.Application) -> None:
        await node.downloads.close_streams()

    app.on_shutdown.append(close_streams)
    return app


def backup_offline(config: Config, dest: Path, *, with_store: bool) -> dict[str, Any]:
    """Back up a node that is not running (the caller holds the data folder's lock)."""
    identity = NodeIdentity.load(config.key_path)
    return node_backup.backup(config, identity.node_id, dest, with_store=with_store)


def restore(archive: Path, target: Path) -> dict[str, Any]:
    return node_backup.restore(archive, target)
