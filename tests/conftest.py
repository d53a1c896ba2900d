"""Shared fixtures: a fresh database per test, real nodes, real media.

The suite runs on SQLite by default. With ``PRIV_NETWORK_TEST_PG`` set to an
admin DSN (``postgresql://user@host/postgres``), every test gets its own
freshly created PostgreSQL database instead; if that server cannot be
reached the tests error out, they never skip.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from priv_network.config import Config, config_from_dict
from priv_network.identity import NodeIdentity
from priv_network.server import create_app, initialize

PG_ENV = "PRIV_NETWORK_TEST_PG"
REPO = Path(__file__).resolve().parent.parent


def pg_admin_dsn() -> str | None:
    return os.environ.get(PG_ENV) or None


def pytest_report_header(config: pytest.Config) -> str:
    dsn = pg_admin_dsn()
    return f"priv_network database: {'PostgreSQL at ' + dsn if dsn else 'SQLite'}"


@pytest.fixture
async def database_url(tmp_path: Path) -> AsyncIterator[str]:
    """A database URL for one test: a SQLite file, or a new PostgreSQL database."""
    dsn = pg_admin_dsn()
    if dsn is None:
        yield f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"
        return
    name = f"pn_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = dsn.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def make_config(data_dir: Path, database_url: str, **sections: dict[str, Any]) -> Config:
    raw: dict[str, dict[str, Any]] = {
        "node": {"name": "alice", "listen": "127.0.0.1:8700"},
        "database": {"url": database_url},
        "store": {"min_free": 0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(data_dir, raw)


@dataclass
class RunningNode:
    config: Config
    identity: NodeIdentity
    token: str
    client: TestClient[Any, Any]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def api(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.client.request(method, path, headers=self.auth, **kwargs) as resp:
            data = await resp.json()
            assert resp.status < 400, (resp.status, data)
            return data


NodeFactory = Callable[..., Awaitable[RunningNode]]


@pytest.fixture
async def node_factory(tmp_path: Path, database_url: str) -> AsyncIterator[NodeFactory]:
    """Start in-process nodes on real loopback sockets."""
    clients: list[TestClient[Any, Any]] = []

    async def start(name: str = "alice", **sections: dict[str, Any]) -> RunningNode:
        data_dir = tmp_path / name
        data_dir.mkdir()
        port = free_port()
        config = make_config(data_dir, database_url, node={"name": name, "listen": f"127.0.0.1:{port}"}, **sections)
        identity = NodeIdentity.generate()
        token = await initialize(config, identity)
        client = TestClient(TestServer(create_app(config, identity), host="127.0.0.1", port=port))
        await client.start_server()
        clients.append(client)
        return RunningNode(config=config, identity=identity, token=token, client=client)

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def node(node_factory: NodeFactory) -> RunningNode:
    return await node_factory()


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    from tests.media import make_audio, make_image, make_video

    d = tmp_path / "media"
    d.mkdir()
    make_video(d / "Spider-Man Homecoming.mp4", seconds=3)
    make_audio(d / "Amélie - La Valse.mp3")
    make_image(d / "cover.png")
    (d / "notes.txt").write_text("plain text\n")
    return d


# -- the real CLI, as a user runs it -----------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Cli:
    data: Path
    env: dict[str, str]

    def run(self, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "priv_network", "--data", str(self.data), *args],
            capture_output=True,
            check=False,
            text=True,
            env=self.env,
            input=input,
            timeout=timeout,
            cwd=REPO,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "priv_network", "--data", str(self.data), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=REPO,
        )


@pytest.fixture
def cli(tmp_path: Path, database_url: str) -> Iterator[Cli]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIV_NETWORK")}
    if not database_url.startswith("sqlite"):
        env["PRIV_NETWORK_DATABASE_URL"] = database_url
    yield Cli(data=tmp_path / "node", env=env)
