"""Catalog sync between real nodes: visibility changes, a peer going down and
coming back, restarts, feed rebuilds and member removal."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from tests.network.conftest import CATALOG, NetNode, Network, eventually, group, ids, signed_request, write_file


async def titles_of(viewer: NetNode, owner: NetNode) -> dict[str, str]:
    return {h["id"]: h["title"] for h in await viewer.search(node=owner)}


async def test_three_nodes_visibility_outage_and_recovery(network: Network, tmp_path: Path) -> None:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await group(a, b, c)

    film = (await a.add(write_file(tmp_path, "Holiday Film.txt"), visibility="network"))[0]
    picnic = (await a.add(write_file(tmp_path, "Picnic.txt"), visibility="network"))[0]
    await b.sync()
    await c.sync()
    hits = await c.search("holiday")
    assert [(h["id"], h["node"], h["online"], h["node_name"]) for h in hits] == [(film["id"], a.node_id, True, "alpha")]

    # Access narrowed to B: C loses the item, B keeps it.
    await a.api("PATCH", f"/api/v1/items/{film['id']}", json={"visibility": f"peers:{b.node_id}"})
    await b.sync()
    await c.sync()
    assert await c.search("holiday") == []
    assert ids(await b.search("holiday")) == {film["id"]}
    assert ids(await c.search(node=a)) == {picnic["id"]}

    # A goes down: its rows stay searchable everywhere, marked offline.
    await a.stop()
    for node in (b, c):
        changed = await node.sync()
        assert str(changed[a.node_id]).startswith("error"), changed
        assert changed[node.node_id] == 0
    assert {(h["id"], h["online"]) for h in await b.search(node=a)} == {(film["id"], False), (picnic["id"], False)}
    assert {(h["id"], h["online"]) for h in await c.search("picnic")} == {(picnic["id"], False)}
    for node in (b, c):
        state = (await node.peers())[a.node_id]
        assert state["online"] is False
        assert state["failures"] >= 1
        assert state["next_retry_at"] > time.time()
        assert state["last_error"]

    # A comes back on the same data, database and port. Until A speaks, B still backs it off.
    await a.start()
    assert (await b.peers())[a.node_id]["failures"] >= 1
    changed = await a.sync()
    assert changed[b.node_id] == changed[c.node_id] == 0
    for node in (b, c):
        state = (await node.peers())[a.node_id]
        assert (state["failures"], state["next_retry_at"], state["online"]) == (0, None, True), node.name
    assert all(h["online"] for h in await b.search(node=a))

    fresh = (await a.add(write_file(tmp_path, "After the outage.txt"), visibility="network"))[0]
    assert (await b.sync())[a.node_id] == 1
    assert ids(await b.search("outage")) == {fresh["id"]}
    assert ids(await b.search(node=a)) == {film["id"], picnic["id"], fresh["id"]}


async def test_a_restarted_node_polls_everyone_and_is_back_online_at_once(network: Network, tmp_path: Path) -> None:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await group(a, b, c)
    await a.stop()
    for node in (b, c):
        assert str((await node.sync())[a.node_id]).startswith("error")
        assert (await node.peers())[a.node_id]["online"] is False
    # While A was away, B added something: A's start-up round fetches it without being asked.
    news = (await b.add(write_file(tmp_path, "While you were away.txt"), visibility="network"))[0]

    await a.start(sync={"at_start": True})

    async def back_everywhere() -> bool:
        states = [(await node.peers())[a.node_id] for node in (b, c)]
        return all(s["online"] and not s["failures"] for s in states)

    await eventually(back_everywhere, what="B and C see A online again without polling it")
    await eventually(lambda: _found(a, "away", news["id"]), what="A's start-up round fetched B's new item")


async def _found(node: NetNode, q: str, item_id: str) -> bool:
    return item_id in ids(await node.search(q))


async def test_cursors_survive_restarts(network: Network, tmp_path: Path) -> None:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await group(a, b, c)
    for name in ("one.txt", "two.txt", "three.txt"):
        await a.add(write_file(tmp_path, name), visibility="network")
    assert (await b.sync())[a.node_id] == 3
    assert (await c.sync())[a.node_id] == 3

    for node in (a, b, c):
        await node.restart()
    for node in (a, b, c):
        changed = await node.sync()
        assert set(changed) == {a.node_id, b.node_id, c.node_id}
        assert set(changed.values()) == {0}, (node.name, changed)

    # Only what is new after the restart is fetched: the cursor was kept, not reset.
    await a.add(write_file(tmp_path, "four.txt"), visibility="network")
    assert (await b.sync())[a.node_id] == 1
    assert len(await b.search(node=a)) == 4


async def test_feed_rebuild_makes_peers_start_over_without_losing_rows(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha")
    b = await network.node("beta", sync={"page_size": 2})
    await group(a, b)
    for i in range(5):
        await a.add(write_file(tmp_path, f"clip {i}.txt"), visibility="network")
    await b.sync()
    before = await titles_of(b, a)
    assert len(before) == 5
    assert (await b.sync())[a.node_id] == 0

    await a.stop()
    new_feed = secrets.token_hex(16)
    await a.sql("UPDATE node_meta SET value = :v WHERE key = 'feed_id'", v=new_feed)
    await a.start()

    changed = await b.sync()
    assert changed[a.node_id] >= 5  # read again from the start, over several pages
    assert await titles_of(b, a) == before
    assert await b.sql("SELECT feed_id FROM registry_sources WHERE node_id = :n", n=a.node_id) == [(new_feed,)]
    assert (await b.sync())[a.node_id] == 0


async def test_removed_member_leaves_every_registry_and_is_refused(network: Network, tmp_path: Path) -> None:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await group(a, b, c)
    gone = (await c.add(write_file(tmp_path, "Gamma Movie.txt"), visibility="network"))[0]
    for node in (a, b):
        await node.sync()
        assert ids(await node.search("gamma movie")) == {gone["id"]}
    for node in (a, b):
        status, _ = await signed_request(a.session, c.identity, "GET", node.url + CATALOG)
        assert status == 200

    await a.api("DELETE", f"/api/v1/network/members/{c.node_id}")
    await a.sync()
    await b.sync()
    for node in (a, b):
        assert c.node_id not in await node.peers(), node.name
        assert await node.search("gamma movie") == [], node.name
        assert await node.search(node=c) == [], node.name
        status, body = await signed_request(a.session, c.identity, "GET", node.url + CATALOG)
        assert status in (401, 403), (node.name, status, body)
    changed = await c.sync()
    assert str(changed[a.node_id]).startswith("error") and str(changed[b.node_id]).startswith("error")
    # A and B still see each other.
    assert set(await b.peers()) == {a.node_id}


async def test_scheduled_sync_picks_up_changes_without_a_manual_sync(network: Network, tmp_path: Path) -> None:
    a = await network.node("alpha")
    b = await network.node("beta", sync={"interval": "1s"})
    await group(a, b)
    item = (await a.add(write_file(tmp_path, "Scheduled.txt"), visibility="network"))[0]

    async def arrived() -> bool:
        return ids(await b.search("scheduled")) == {item["id"]}

    await eventually(arrived, timeout=20, what="the scheduled sync bringing A's new item to B")
