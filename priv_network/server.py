"""The composition root: builds every part of a node and wires them together.

This is the only module that imports ``node``, ``registry`` and ``webapp``;
they meet here through the protocols in ``priv_network.interfaces``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncEngine

from node.api import FederationApi, ItemsApi
from node.blobs import BlobStore
from node.service import ContentManager
from node.store import CmaStore
from priv_network import db
from priv_network.config import Config
from priv_network.errors import PrivNetworkError
from priv_network.http import auth_middleware, error_middleware, security_headers_middleware
from priv_network.identity import NodeIdentity
from priv_network.keys import AUTHENTICATOR, CONFIG
from priv_network.wire import FeedPage
from registry.api import SearchApi
from registry.service import Registry
from registry.store import RegistryStore
from webapp.views import Pages

log = logging.getLogger("priv_network.server")


class LocalCatalog:
    """This node's own feed, read in-process by its manager (the same path as a peer's)."""

    def __init__(self, cma: ContentManager) -> None:
        self.cma = cma
        self.node_id = cma.node_id

    async def fetch_changes(self, since: int, limit: int) -> FeedPage:
        return await self.cma.changes(since, limit)


class Node:
    """Every long-lived object of one node, built once."""

    def __init__(self, config: Config, identity: NodeIdentity, engine: AsyncEngine | None = None) -> None:
        self.config = config
        self.identity = identity
        self.engine = engine or db.create_engine(config.database_url)
        self.executor = ThreadPoolExecutor(max_workers=config.store.hash_workers + 2, thread_name_prefix="pn-worker")
        self.blobs = BlobStore(config.store_path, config.store.block_size, config.store.min_free)
        self.cma = ContentManager(
            store=CmaStore(self.engine),
            blobs=self.blobs,
            executor=self.executor,
            node_id=identity.node_id,
            node_name=config.node.name,
            node_url=config.node.public_url,
            hash_workers=config.store.hash_workers,
        )
        self.registry = Registry(
            store=RegistryStore(self.engine),
            own=LocalCatalog(self.cma),
            node_id=identity.node_id,
            name=config.node.name,
            url=config.node.public_url,
            page_size=config.sync.page_size,
        )
        self.cma.add_listener(self.registry.sync_self)

    async def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        await self.engine.dispose()


async def initialize(config: Config, identity: NodeIdentity) -> str:
    """Create the database at the latest revision and the first admin token."""
    node = Node(config, identity)
    try:
        await db.upgrade(node.engine)
        await node.cma.bootstrap()
        return await node.cma.create_token("admin (CLI)", admin=True, kind="admin")
    finally:
        await node.close()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(config: Config, identity: NodeIdentity, *, upgrade: bool = False) -> web.Application:
    node = Node(config, identity)
    app = web.Application(
        middlewares=[error_middleware, security_headers_middleware, auth_middleware],
        client_max_size=1024**2,
    )
    app[CONFIG] = config
    app[AUTHENTICATOR] = node.cma

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

    async def services(app: web.Application) -> AsyncIterator[None]:
        await node.cma.start()
        await node.registry.start()
        yield

    async def scheduler(app: web.Application) -> AsyncIterator[None]:
        sched = AsyncIOScheduler()
        jitter = max(1, int(config.sync.interval * config.sync.jitter))

        async def sync_job() -> None:
            try:
                changed = await node.registry.sync_all()
                log.debug("sync round done: %s", changed)
            except PrivNetworkError as exc:
                log.warning("sync round failed: %s", exc.message)
            except Exception:
                log.exception("sync round crashed")

        sched.add_job(
            sync_job,
            "interval",
            seconds=config.sync.interval,
            jitter=jitter,
            id="sync",
            name="sync every peer's feed",
            max_instances=1,
            coalesce=True,
            next_run_time=None,
        )
        sched.start()
        log.info("scheduler started: sync every %.0fs (+ up to %ds jitter)", config.sync.interval, jitter)
        yield
        sched.shutdown(wait=False)

    app.cleanup_ctx.extend([database, services, scheduler])
    for routes in (
        ItemsApi(node.cma).routes(),
        FederationApi(node.cma, identity).routes(),
        SearchApi(node.registry).routes(),
        Pages(node.registry, node.cma, config.node.name).routes(),
    ):
        app.add_routes(routes)
    app.router.add_get("/healthz", _healthz)
    return app
