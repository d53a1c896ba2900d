"""The scheduled jobs really run (an explicit next_run_time=None once left them paused)."""

from __future__ import annotations

import asyncio
import re
import time

from tests.conftest import NodeFactory


async def test_sync_rounds_run_on_their_own(node_factory: NodeFactory) -> None:
    node = await node_factory(sync={"interval": "1s", "jitter": 0.0})
    deadline = time.monotonic() + 30
    rounds = 0.0
    while time.monotonic() < deadline:
        async with node.client.get("/metrics", headers=node.auth) as resp:
            assert resp.status == 200
            text = await resp.text()
        found = re.search(r"^priv_network_sync_rounds_total (\d+)", text, re.MULTILINE)
        rounds = float(found.group(1)) if found else 0.0
        if rounds >= 2:
            break
        await asyncio.sleep(0.2)
    assert rounds >= 2, "the scheduler never ran a sync round"


async def test_metrics_need_owner_credentials(node_factory: NodeFactory) -> None:
    node = await node_factory()
    async with node.client.get("/metrics") as resp:
        assert resp.status == 401
    token = (await node.api("POST", "/api/v1/tokens", json={"name": "viewer", "admin": False}))["token"]
    async with node.client.get("/metrics", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 403
    async with node.client.get("/metrics", headers=node.auth) as resp:
        text = await resp.text()
    assert "# TYPE priv_network_items gauge" in text
    assert 'priv_network_http_requests_total{method="GET",status="4xx"}' in text
