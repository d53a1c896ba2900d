"""Web app pages with 10,000 items in the registry: time to the full HTML, against /healthz.

    .venv/bin/python bench/pages.py [--items 10000] [--repeats 20]

A real node (in-process, real socket) whose registry gets N rows written
straight into its tables (as a sync would leave them), then
each main page is fetched N times with the owner's session. Goal: under
200 ms per page on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import sqlalchemy as sa
from aiohttp import web

from node.service import new_item_id
from priv_network.config import config_from_dict
from priv_network.identity import NodeIdentity
from priv_network.server import create_app, initialize
from registry.search import normalize

WORDS = [
    "amber",
    "river",
    "night",
    "spider",
    "garden",
    "ocean",
    "summer",
    "winter",
    "city",
    "dance",
    "song",
    "light",
    "road",
    "story",
]


async def main(items: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "node"
        data.mkdir()
        config = config_from_dict(
            data, {"node": {"name": "bench", "listen": "127.0.0.1:8799"}, "store": {"min_free": 0}}
        )
        identity = NodeIdentity.generate()
        token = await initialize(config, identity)
        # Rows owned by this node itself: a peer's rows would be dropped at start-up (not a member).
        peer = identity.node_id
        engine = sa.create_engine(f"sqlite:///{data / 'node.db'}")
        rows = []
        now = time.time()
        for n in range(items):
            title = " ".join(secrets.choice(WORDS) for _ in range(4)) + f" {n}"
            rows.append(
                {
                    "id": n + 1,
                    "node_id": peer,
                    "item_id": new_item_id(),
                    "title": title,
                    "kind": "video",
                    "mime": "video/mp4",
                    "size": 1000,
                    "duration": 60.0,
                    "width": 320,
                    "height": 240,
                    "content_hash": "0" * 64,
                    "block_size": 1048576,
                    "manifest_hash": "0" * 64,
                    "has_poster": False,
                    "visibility": "network",
                    "created_at": now - n,
                    "updated_at": now - n,
                    "search_text": normalize(title),
                    "source": "local",
                }
            )
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO registry_sources(node_id, name, url, cursor, online, failures) "
                    "VALUES (:n, 'peer', 'http://127.0.0.2:1', 0, 1, 0)"
                ),
                {"n": peer},
            )
            cols = ", ".join(rows[0])
            conn.execute(
                sa.text(f"INSERT INTO registry_items({cols}) VALUES ({', '.join(':' + c for c in rows[0])})"), rows
            )
            conn.execute(sa.text("INSERT INTO registry_fts(rowid, search_text) VALUES (:id, :search_text)"), rows)
        engine.dispose()
        runner = web.AppRunner(create_app(config, identity), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 8799).start()
        headers = {"Authorization": f"Bearer {token}"}
        pages = [
            "/healthz",
            "/",
            "/search?q=spider",
            "/search?q=sp",
            "/search",
            f"/items/{rows[0]['item_id']}",
            "/network",
            "/monitor",
            "/downloads",
            "/settings",
        ]
        try:
            async with aiohttp.ClientSession("http://127.0.0.1:8799", headers=headers) as session:
                print(f"{items} items in the registry, {repeats} fetches per page (median / p95 ms)")
                for page in pages:
                    times = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        async with session.get(page) as resp:
                            await resp.read()
                            assert resp.status == 200, (page, resp.status)
                        times.append((time.perf_counter() - start) * 1000)
                    times.sort()
                    p95 = times[int(0.95 * (len(times) - 1))]
                    verdict = "" if page == "/healthz" else ("  goal < 200 ms: MET" if p95 < 200 else "  MISSED")
                    print(f"  {page:40} {statistics.median(times):7.1f} {p95:7.1f}{verdict}")
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.items, args.repeats))
