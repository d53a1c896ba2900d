"""keys rotate: peers accept the new key and refuse the old one; the node ID stays; a newcomer can still join."""

from __future__ import annotations

from priv_network.identity import NodeIdentity, node_id_from_public_key
from tests.network.conftest import Network, group, join, signed_request


async def test_peers_follow_a_key_rotation(network: Network) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    await group(a, b)
    old = NodeIdentity(a.identity.private_key)  # the key before the rotation
    catalog = f"{b.url}/federation/v1/catalog?since=0&limit=10"
    status, _ = await signed_request(network.session, old, "GET", catalog)
    assert status == 200

    rotated = await a.api("POST", "/api/v1/keys/rotate")
    assert rotated["node_id"] == a.node_id
    assert a.identity.node_id == a.node_id  # same ID...
    assert node_id_from_public_key(a.identity.public.public_key) != a.node_id  # ...new key
    assert (a.config.data_dir / "node.id").read_text().strip() == a.node_id

    # B learnt the new key (announcement, or at the latest its next poll of A): A's new signatures pass.
    await b.sync()
    result = await a.sync()
    assert isinstance(result[b.node_id], int), result
    status, _ = await signed_request(network.session, a.identity, "GET", catalog)
    assert status == 200
    # ...and the old key no longer does.
    status, body = await signed_request(network.session, old, "GET", catalog)
    assert status == 401, body

    # The node document proves the new key belongs to the ID, so a newcomer can join through A.
    doc = await a.call("GET", "/federation/v1/node")
    assert len(doc.data["key_chain"]) == 2
    c = await network.node("gamma")
    await join(a, c)
    assert a.node_id in await c.members()


async def test_a_restarted_node_keeps_its_id_and_new_key(network: Network) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    await group(a, b)
    await a.api("POST", "/api/v1/keys/rotate")
    reloaded = NodeIdentity.load(a.config.key_path)
    assert reloaded.node_id == a.node_id
    assert reloaded.public.public_key == a.identity.public.public_key
