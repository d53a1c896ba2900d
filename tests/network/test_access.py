"""Access rules as a peer meets them: in the feed, in search and in the bytes it may fetch.

A peer never learns anything about an item it may not see: no title, no
hash, no bytes; asking for one looks exactly like asking for an ID that
does not exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from priv_network.wire import ITEM_ID_RE
from tests.network.conftest import CATALOG, NetNode, Network, eventually, group, ids, signed_request, write_file

UNKNOWN_ID = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
async def trio(network: Network) -> tuple[NetNode, NetNode, NetNode]:
    a, b, c = [await network.node(n) for n in ("alpha", "beta", "gamma")]
    await group(a, b, c)
    return a, b, c


async def add_items(a: NetNode, b: NetNode, c: NetNode, folder: Path) -> dict[str, dict[str, Any]]:
    """One item of A per kind of rule, each with distinctive title and bytes."""
    rules = {
        "private": "private",
        "network": "network",
        "only-b": f"peers:{b.node_id}",
        "only-c": f"peers:{c.node_id}",
        "b-and-c": f"peers:{b.node_id},{c.node_id}",
    }
    out = {}
    for key, rule in rules.items():
        path = write_file(folder, f"Zebra {key} original.txt", f"bytes of the {key} item\n".encode())
        out[key] = (await a.add(path, visibility=rule, title=f"Zebra {key}"))[0]
    return out


async def fetch(viewer: NetNode, owner: NetNode, path: str, extra: dict[str, str] | None = None) -> tuple[int, bytes]:
    return await signed_request(owner.session, viewer.identity, "GET", owner.url + path, extra=extra)


async def test_peer_gets_exactly_the_bytes_of_items_it_may_see(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    items = await add_items(a, b, c, tmp_path)
    may_see = {b.node_id: {"network", "only-b", "b-and-c"}, c.node_id: {"network", "only-c", "b-and-c"}}
    for viewer in (b, c):
        for key, item in items.items():
            status, body = await fetch(viewer, a, f"/federation/v1/content/{item['id']}")
            if key in may_see[viewer.node_id]:
                assert (status, body) == (200, f"bytes of the {key} item\n".encode()), (viewer.name, key)
            else:
                assert status == 404, (viewer.name, key, status)


async def test_hidden_item_looks_exactly_like_an_unknown_one(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    items = await add_items(a, b, c, tmp_path)
    status, unknown = await fetch(b, a, f"/federation/v1/content/{UNKNOWN_ID}")
    assert status == 404
    unknown_text = unknown.decode().replace(UNKNOWN_ID, "<id>")
    for key in ("private", "only-c"):
        item_id = items[key]["id"]
        status, body = await fetch(b, a, f"/federation/v1/content/{item_id}")
        assert status == 404, key
        assert body.decode().replace(item_id, "<id>") == unknown_text, key
        assert b"Zebra" not in body and items[key]["content_hash"].encode() not in body
    # A Range request does not tell them apart either.
    for item_id in (items["private"]["id"], UNKNOWN_ID):
        status, _ = await fetch(b, a, f"/federation/v1/content/{item_id}", extra={"Range": "bytes=0-3"})
        assert status == 404


async def test_range_requests_reach_visible_content(trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path) -> None:
    a, b, c = trio
    items = await add_items(a, b, c, tmp_path)
    status, body = await fetch(b, a, f"/federation/v1/content/{items['network']['id']}", extra={"Range": "bytes=6-7"})
    assert (status, body) == (206, b"of")


async def test_catalog_carries_hidden_items_only_as_bare_deletions(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    a, b, c = trio
    items = await add_items(a, b, c, tmp_path)
    hidden = {b.node_id: {"private", "only-c"}, c.node_id: {"private", "only-b"}}
    for viewer in (b, c):
        status, raw = await fetch(viewer, a, CATALOG + "?since=0&limit=1000")
        assert status == 200
        page = json.loads(raw)
        by_id = {e["id"]: e for e in page["entries"] if e["entity"] == "item"}
        for key, item in items.items():
            entry = by_id[item["id"]]
            if key in hidden[viewer.node_id]:
                assert entry == {"seq": entry["seq"], "entity": "item", "op": "delete", "id": item["id"]}
                for secret in (f"Zebra {key}", item["content_hash"], "original.txt", item["manifest_hash"]):
                    assert secret.encode() not in raw, (viewer.name, key, secret)
            else:
                assert entry["op"] == "upsert" and entry["item"]["title"] == f"Zebra {key}"
        # Every delete entry names an item ID, nothing more.
        assert all(ITEM_ID_RE.match(e["id"]) for e in page["entries"] if e["op"] == "delete")


async def test_peers_lists_reach_only_those_peers(trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path) -> None:
    a, b, c = trio
    items = await add_items(a, b, c, tmp_path)
    await b.sync()
    await c.sync()
    expect = {
        b: {"network", "only-b", "b-and-c"},
        c: {"network", "only-c", "b-and-c"},
        a: set(items),
    }
    for node, keys in expect.items():
        assert ids(await node.search("zebra")) == {items[k]["id"] for k in keys}, node.name
        assert ids(await node.search(node=a)) == {items[k]["id"] for k in keys}, node.name
    # A peer's registry does not even learn the rule itself beyond its own copy.
    for hit in await b.search("zebra"):
        assert hit["visibility"] is None

    # Revoking access reaches a peer as a deletion; granting it brings the item back.
    await a.api("PATCH", f"/api/v1/items/{items['b-and-c']['id']}", json={"visibility": f"peers:{c.node_id}"})
    await a.api("PATCH", f"/api/v1/items/{items['only-c']['id']}", json={"visibility": "network"})
    await b.sync()
    await c.sync()
    assert ids(await b.search("zebra")) == {items[k]["id"] for k in ("network", "only-b", "only-c")}
    assert ids(await c.search("zebra")) == {items[k]["id"] for k in ("network", "only-c", "b-and-c")}
    status, _ = await fetch(b, a, f"/federation/v1/content/{items['b-and-c']['id']}")
    assert status == 404


async def test_adding_again_with_a_visibility_reaches_peers_as_a_change(network: Network, tmp_path: Path) -> None:
    """`add --visibility` on content already stored changes the item as `visibility` does: peers follow."""
    a, b = await network.node("alpha"), await network.node("beta")
    await group(a, b)
    path = write_file(tmp_path, "Zebra film.txt")
    item = (await a.add(path, visibility="network"))[0]
    await b.sync()
    assert ids(await b.search("zebra")) == {item["id"]}

    report = await a.api("POST", "/api/v1/items", json={"paths": [str(path)], "visibility": "private"})
    assert report["visibility_changed"] == [{"id": item["id"], "was": "network", "now": "private"}]
    await b.sync()
    assert await b.search("zebra") == []
    status, _ = await fetch(b, a, f"/federation/v1/content/{item['id']}")
    assert status == 404

    # Without a visibility, adding again leaves it as it is.
    report = await a.api("POST", "/api/v1/items", json={"paths": [str(path)]})
    assert [i["visibility"] for i in report["existing"]] == ["private"]
    await a.api("POST", "/api/v1/items", json={"paths": [str(path)], "visibility": f"peers:{b.node_id}"})
    await b.sync()
    assert ids(await b.search("zebra")) == {item["id"]}


async def test_a_peers_list_must_name_members(trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path) -> None:
    """An unknown or removed node in a peers list is refused with its reason; nothing changes."""
    a, b, c = trio
    item = (await a.add(write_file(tmp_path, "Zebra members.txt"), visibility=f"peers:{b.node_id}"))[0]
    await a.api("DELETE", f"/api/v1/network/members/{c.node_id}")
    stranger = "AAAAAAAA-AAAAAAAA-AAAAAAAA-AAAAAAAA"
    for rule, reason in (
        (f"peers:{b.node_id},{stranger}", "is not a member of this group"),
        (f"peers:{c.node_id}", "was removed from the group"),
    ):
        reply = await a.call("PATCH", f"/api/v1/items/{item['id']}", json={"visibility": rule})
        assert reply.status == 400 and reason in reply.message, (rule, reply.message)
        path = write_file(tmp_path, f"Zebra other {reason[:6]}.txt")
        reply = await a.call("POST", "/api/v1/items", json={"paths": [str(path)], "visibility": rule})
        assert reply.status == 400 and reason in reply.message, (rule, reply.message)
        assert ids(await a.search("zebra other")) == set()
    assert (await a.api("GET", f"/api/v1/items/{item['id']}"))["visibility"] == f"peers:{b.node_id}"
    # The node itself may be named (it always sees its own items).
    rule = f"peers:{a.node_id},{b.node_id}"
    await a.api("PATCH", f"/api/v1/items/{item['id']}", json={"visibility": rule})
    assert (await a.api("GET", f"/api/v1/items/{item['id']}"))["visibility"] == rule


async def test_a_holder_is_not_asked_when_the_owner_refuses(
    trio: tuple[NetNode, NetNode, NetNode], tmp_path: Path
) -> None:
    """The owner narrows who may see an item while a holder still has the older rule.

    C asks A (online) and A refuses: C must not then fetch the bytes from B's
    copy, whose check still uses the rule B last synced. Holders stand in for
    an owner that cannot be reached, never for one that says no.
    """
    a, b, c = trio
    data = b"only for beta now " * 70_000
    item = (await a.add(write_file(tmp_path, "Narrowed.bin", data), visibility="network"))[0]
    await b.sync()
    await b.api("POST", "/api/v1/pins", json={"id": item["id"]})

    async def b_holds_it() -> bool:
        return [p["state"] for p in (await b.api("GET", "/api/v1/pins"))["pins"]] == ["complete"]

    await eventually(b_holds_it, what="B's pin to complete")
    await c.sync()
    [hit] = await c.search("narrowed")
    assert [h["name"] for h in hit["holders"]] == ["beta"]

    await a.api("PATCH", f"/api/v1/items/{item['id']}", json={"visibility": f"peers:{b.node_id}"})
    refused = f"alpha no longer shares {item['id']} with this node"
    for _ in range(3):  # the refusal is not cached away: every try asks A, and A says no
        async with c.session.get(f"{c.url}/api/v1/items/{item['id']}/content", headers=c.auth) as resp:
            assert resp.status == 404, resp.status
            assert (await resp.json())["error"]["message"] == refused
    reply = await c.call("POST", "/api/v1/pins", json={"id": item["id"]})
    assert (reply.status, reply.data["error"]["message"]) == (404, refused)
    assert (await c.api("GET", "/api/v1/pins"))["pins"] == []
    sent_by_b = (await b.api("GET", "/api/v1/status"))["traffic"].get(f"peer:{c.node_id}", {}).get("sent", 0)
    assert sent_by_b == 0
