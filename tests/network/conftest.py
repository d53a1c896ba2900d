"""Multi-node helpers: real nodes on 127.0.0.x, each with its own database.

Every node of a test gets its own data folder and its own database (a
SQLite file, or with ``PRIV_NETWORK_TEST_PG`` a PostgreSQL database of its
own, see ``PgDatabases``), and listens on its own loopback address
(127.0.0.2, 127.0.0.3, ...) on a real socket, so nodes talk to each other
over real HTTP exactly as they would across machines. A node can be stopped
and started again on the same data folder, database and port.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestServer
from yarl import URL

from priv_network import db
from priv_network.config import Config
from priv_network.identity import NodeIdentity
from priv_network.server import create_app, initialize
from priv_network.signing import Signer
from tests.conftest import free_port, make_config, pg_admin_dsn

CATALOG = "/federation/v1/catalog"


@dataclass
class Reply:
    status: int
    data: Any

    @property
    def message(self) -> str:
        return str(self.data["error"]["message"])


@dataclass(eq=False)
class NetNode:
    """One running (or stopped) node, driven through its admin API like the CLI does."""

    name: str
    host: str
    port: int
    data_dir: Path
    database_url: str
    identity: NodeIdentity
    session: aiohttp.ClientSession
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    token: str = ""
    server: TestServer | None = None

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def config(self) -> Config:
        sections = {k: dict(v) for k, v in self.sections.items()}
        sections.setdefault("node", {}).update(name=self.name, listen=f"{self.host}:{self.port}")
        return make_config(self.data_dir, self.database_url, **sections)

    @property
    def url(self) -> str:
        return self.config.node.public_url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def init(self) -> None:
        self.data_dir.mkdir(parents=True)
        self.token = await initialize(self.config, self.identity)

    async def start(self, **sections: dict[str, Any]) -> None:
        """Start (or start again) on the same data folder, database and port; ``sections`` override config."""
        assert self.server is None, f"{self.name} is already running"
        for name, values in sections.items():
            self.sections.setdefault(name, {}).update(values)
        server = TestServer(create_app(self.config, self.identity), host=self.host, port=self.port)
        await server.start_server()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.close()

    async def restart(self, **sections: dict[str, Any]) -> None:
        await self.stop()
        await self.start(**sections)

    # -- the admin API --------------------------------------------------------
    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.session.request(method, self.url + path, headers=self.auth, **kwargs) as resp:
            return Reply(resp.status, await resp.json())

    async def api(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = await self.call(method, path, **kwargs)
        assert reply.status < 400, (self.name, method, path, reply)
        return reply.data

    async def add(self, *paths: Path, visibility: str = "network", title: str | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"paths": [str(p) for p in paths], "visibility": visibility}
        if title is not None:
            body["title"] = title
        report = await self.api("POST", "/api/v1/items", json=body)
        assert not report["failed"], report
        return list(report["added"]) + list(report["existing"])

    async def sync(self) -> dict[str, Any]:
        return dict((await self.api("POST", "/api/v1/sync"))["changed"])

    async def search(self, q: str = "", node: NetNode | None = None) -> list[dict[str, Any]]:
        params = {"q": q, "limit": "200"}
        if node is not None:
            params["node"] = node.node_id
        return list((await self.api("GET", "/api/v1/search", params=params))["results"])

    async def peers(self) -> dict[str, dict[str, Any]]:
        return {p["node_id"]: p for p in (await self.api("GET", "/api/v1/peers"))["peers"]}

    async def members(self) -> dict[str, dict[str, Any]]:
        return {m["node_id"]: m for m in (await self.api("GET", "/api/v1/network/members"))["members"]}

    async def invite(self, ttl: str = "24h", uses: int = 1) -> str:
        return str((await self.api("POST", "/api/v1/network/invites", json={"ttl": ttl, "uses": uses}))["token"])

    async def join(self, token: str) -> Reply:
        return await self.call("POST", "/api/v1/network/join", json={"token": token})

    # -- the node's database, behind its back (tests only) ---------------------
    async def sql(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        engine = db.create_engine(self.database_url)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(sa.text(statement), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            await engine.dispose()


async def signed_request(
    session: aiohttp.ClientSession,
    identity: NodeIdentity,
    method: str,
    url: str,
    *,
    body: bytes = b"",
    sign_url: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """Send a request signed by ``identity`` (for ``sign_url``, default ``url``); returns (status, body).

    ``headers`` replaces the signature headers (to replay or tamper with them); ``extra`` adds unsigned ones.
    """
    signed = headers if headers is not None else Signer(identity).sign(method, sign_url or url, body)
    signed = {**signed, **(extra or {})}
    async with session.request(method, URL(url, encoded=True), data=body or None, headers=signed) as resp:
        return resp.status, await resp.read()


def _pg_dsn(dsn: str, name: str) -> str:
    return f"{dsn.rsplit('/', 1)[0]}/{name}"


def _pg_url(dsn: str, name: str) -> str:
    return _pg_dsn(dsn, name).replace("postgresql://", "postgresql+asyncpg://", 1)


async def _pg_execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


# Every table but alembic's emptied (foreign keys not enforced meanwhile), every sequence restarted:
# the database as `initialize` finds it. One transaction, which is much cheaper than TRUNCATE here.
_EMPTY_ALL_TABLES = """
DO $$
DECLARE r record;
BEGIN
    PERFORM set_config('session_replication_role', 'replica', true);
    FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version' LOOP
        EXECUTE format('DELETE FROM public.%I', r.tablename);
    END LOOP;
    FOR r IN SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' LOOP
        EXECUTE format('ALTER SEQUENCE public.%I RESTART', r.sequencename);
    END LOOP;
END $$;
"""


class PgDatabases:
    """Node databases on PostgreSQL, one per node.

    Creating and dropping a database costs about a second each, so databases
    are copies of one template migrated to the head once per session, and a
    test's databases are emptied and handed to the next test rather than
    dropped. All are dropped at the end of the session.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.template = f"pn_tmpl_{secrets.token_hex(6)}"
        self.free: list[str] = []
        self.created: list[str] = [self.template]

    async def create_template(self) -> None:
        await _pg_execute(self.dsn, f'CREATE DATABASE "{self.template}"')
        engine = db.create_engine(_pg_url(self.dsn, self.template))
        try:
            await db.upgrade(engine)
        finally:
            await engine.dispose()

    async def take(self) -> str:
        """The URL of an empty database at the head revision."""
        if self.free:
            return _pg_url(self.dsn, self.free.pop())
        name = f"pn_net_{secrets.token_hex(6)}"
        self.created.append(name)
        await _pg_execute(self.dsn, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return _pg_url(self.dsn, name)

    async def give_back(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        await _pg_execute(self.dsn, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        await _pg_execute(_pg_dsn(self.dsn, name), _EMPTY_ALL_TABLES)
        self.free.append(name)

    async def drop_all(self) -> None:
        for name in reversed(self.created):
            await _pg_execute(self.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases | None]:
    dsn = pg_admin_dsn()
    if dsn is None:
        yield None
        return
    pool = PgDatabases(dsn)
    try:
        asyncio.run(pool.create_template())
        yield pool
    finally:
        asyncio.run(pool.drop_all())


class Network:
    """Creates nodes for one test, each on its own 127.0.0.x address and its own database."""

    def __init__(self, tmp_path: Path, session: aiohttp.ClientSession, pg_databases: PgDatabases | None = None) -> None:
        self.tmp_path = tmp_path
        self.session = session
        self.pg_databases = pg_databases
        self.nodes: list[NetNode] = []

    async def node(self, name: str, *, start: bool = True, **sections: dict[str, Any]) -> NetNode:
        """A new node called ``name`` (names need not be unique), initialized and, by default, started.

        ``sections`` are config overrides, e.g. ``sync={"page_size": 2}``. The scheduled sync
        runs hourly, and not at start-up, unless a test asks otherwise, so that only the test
        decides when nodes sync.
        """
        host = f"127.0.0.{len(self.nodes) + 2}"
        data_dir = self.tmp_path / f"node{len(self.nodes)}-{name}"
        config: dict[str, dict[str, Any]] = {"sync": {"interval": "1h", "at_start": False}}
        for section, values in sections.items():
            config.setdefault(section, {}).update(values)
        if self.pg_databases is None:
            database_url = f"sqlite+aiosqlite:///{data_dir / 'node.db'}"
        else:
            database_url = await self.pg_databases.take()
        node = NetNode(
            name=name,
            host=host,
            port=free_port(host),
            data_dir=data_dir,
            database_url=database_url,
            identity=NodeIdentity.generate(),
            session=self.session,
            sections=config,
        )
        self.nodes.append(node)
        await node.init()
        if start:
            await node.start()
        return node

    async def close(self) -> None:
        for node in reversed(self.nodes):
            await node.stop()
        if self.pg_databases is not None:
            pool = self.pg_databases
            await asyncio.gather(*(pool.give_back(node.database_url) for node in self.nodes))


@pytest.fixture
async def network(tmp_path: Path, pg_databases: PgDatabases | None) -> AsyncIterator[Network]:
    async with aiohttp.ClientSession() as session:
        net = Network(tmp_path, session, pg_databases)
        try:
            yield net
        finally:
            await net.close()


async def join(inviter: NetNode, joiner: NetNode, **invite: Any) -> dict[str, Any]:
    """``joiner`` joins ``inviter``'s group with a fresh invite; returns the join answer."""
    reply = await joiner.join(await inviter.invite(**invite))
    assert reply.status == 200, reply
    return dict(reply.data)


async def group(*nodes: NetNode) -> None:
    """Make one group: the first node invites the second, each next node joins via its predecessor,
    then one sync round on every node so every member has polled every other."""
    for inviter, joiner in itertools.pairwise(nodes):
        await join(inviter, joiner)
    for node in nodes:
        await node.sync()


def ids(results: Iterable[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in results}


def write_file(folder: Path, name: str, content: bytes | None = None) -> Path:
    """A small file with unique content (so the store does not merge it with another)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content if content is not None else f"{name}\n{secrets.token_hex(16)}\n".encode())
    return path


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds (never a blind sleep)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {timeout:.0f}s")
        await asyncio.sleep(0.05)
