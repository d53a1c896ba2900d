"""keys rotate: peers accept the new key and refuse the old one; the node ID stays; a newcomer can still join."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from priv_network.identity import NodeIdentity, b64u, node_id_from_public_key
from priv_network.wire import RosterEvent
from tests.network.conftest import Network, group, ids, join, signed_request, write_file


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


async def test_a_rotated_node_joins_a_new_group(network: Network, tmp_path: Path) -> None:
    """The joiner's key no longer hashes to its node ID: its key chain proves it, to the inviter and
    (through the inviter's feed) to every other member."""
    d = await network.node("delta")
    await d.api("POST", "/api/v1/keys/rotate")
    await d.api("POST", "/api/v1/keys/rotate")  # twice: the chain has two links
    a = await network.node("alpha")
    c = await network.node("gamma")
    await join(a, c)

    await join(a, d)
    assert (await a.members())[d.node_id]["active"] is True
    item = (await d.add(write_file(tmp_path, "delta film.txt")))[0]
    # A verifies D's requests with the new key, and reads D's feed.
    assert isinstance((await a.sync())[d.node_id], int)
    assert ids(await a.search("delta film")) == {item["id"]}
    # C never met D: it learns D and its key from A's feed, then reads D itself.
    await c.sync()
    assert (await c.members())[d.node_id]["active"] is True
    assert isinstance((await c.sync())[d.node_id], int)
    assert ids(await c.search("delta film")) == {item["id"]}
    assert isinstance((await d.sync())[c.node_id], int)


@pytest.mark.parametrize("rotate_after_removal", [False, True], ids=["rotated-then-removed", "removed-then-rotated"])
async def test_a_rotated_node_removed_rejoins_with_a_new_invite(network: Network, rotate_after_removal: bool) -> None:
    a = await network.node("alpha")
    b = await network.node("beta")
    c = await network.node("gamma")
    await group(a, b, c)
    if not rotate_after_removal:
        await b.api("POST", "/api/v1/keys/rotate")
        await a.sync()
        await c.sync()
    await a.api("DELETE", f"/api/v1/network/members/{b.node_id}")
    await c.sync()
    assert (await c.members())[b.node_id]["active"] is False
    if rotate_after_removal:
        await b.api("POST", "/api/v1/keys/rotate")

    await join(a, b)
    assert (await a.members())[b.node_id]["active"] is True
    assert isinstance((await a.sync())[b.node_id], int)
    # C follows A's feed: B is back, with the key it has now.
    await c.sync()
    assert (await c.members())[b.node_id]["active"] is True
    assert isinstance((await c.sync())[b.node_id], int)


async def test_a_key_that_is_not_the_node_ids_cannot_join_under_it(network: Network) -> None:
    """Claiming a node ID with another key, with no chain or a forged one: 401, and no trace."""
    a = await network.node("alpha")
    victim = await network.node("beta")
    await victim.api("POST", "/api/v1/keys/rotate")
    chain = (await victim.call("GET", "/federation/v1/node")).data["key_chain"]
    mallory = NodeIdentity(Ed25519PrivateKey.generate(), node_id=victim.node_id)  # signs as the victim
    forged_rotate = RosterEvent(
        id=secrets.token_hex(16),
        type="rotate",
        subject=victim.node_id,
        name="beta",
        url=victim.url,
        public_key=b64u(mallory.public.public_key),
        signer=victim.node_id,
        at=time.time(),
    )
    forged_rotate = RosterEvent(**{**forged_rotate.__dict__, "sig": b64u(mallory.sign(forged_rotate.signing_bytes()))})
    before = await a.sql("SELECT id FROM roster_events ORDER BY id")
    for key_chain in ([], chain, [*chain, forged_rotate.to_json()], [{"garbage": 1}], "x"):
        body = {
            "invite": "0" * 32,
            "proof": "0" * 64,
            "node": {"node_id": victim.node_id, "name": "beta", "url": victim.url},
            "public_key": b64u(mallory.public.public_key),
            "key_chain": key_chain,
        }
        raw = json.dumps(body).encode()
        status, answer = await signed_request(
            network.session,
            mallory,
            "POST",
            a.url + "/federation/v1/join",
            body=raw,
            extra={"Content-Type": "application/json"},
        )
        assert status == 401, (key_chain, answer)
        assert b"does not belong to its node ID" in answer
    assert await a.sql("SELECT id FROM roster_events ORDER BY id") == before
    assert victim.node_id not in await a.members()
